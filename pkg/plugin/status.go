package plugin

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
)

// Names shared with the operator (pkg/operator/names.go) and the instance manager (pkg/roles),
// copied so that the plugin does not link the instance manager (names_test.go keeps them equal).
const (
	ClusterLabel          = "pgwarden.io/cluster"
	InstanceLabel         = "pgwarden.io/instance"
	DesiredRoleAnnotation = "pgwarden.io/role"
	ObservedRoleLabel     = "pgwarden.io/instance-role"
	HolderIPAnnotation    = "pgwarden.io/holder-ip"
	FencedAnnotation      = "pgwarden.io/fenced"
	rolePrimary           = "primary"
	roleReplica           = "replica"
)

// LeaseName is the name of cluster's primary Lease.
func LeaseName(cluster string) string { return cluster + "-primary" }

// ClusterResource is the PostgresCluster resource.
var ClusterResource = schema.GroupVersionResource{Group: pgv1.GroupVersion.Group, Version: pgv1.GroupVersion.Version, Resource: "postgresclusters"}

// Env is what the commands work with: the clients, the /status fetcher and the clock.
type Env struct {
	Kube      kubernetes.Interface
	Dynamic   dynamic.Interface // nil: the PostgresCluster object is not read
	Fetcher   StatusFetcher
	Namespace string
	Now       func() time.Time
	// StatusTimeout bounds the parallel /status reads of one Collect (default 2s).
	StatusTimeout time.Duration
}

func (e *Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// Report is what `status` shows.
type Report struct {
	Cluster        string           `json:"cluster"`
	Namespace      string           `json:"namespace"`
	Phase          string           `json:"phase"`
	PhaseReason    string           `json:"phaseReason,omitempty"`
	CurrentPrimary string           `json:"currentPrimary,omitempty"`
	TargetPrimary  string           `json:"targetPrimary,omitempty"`
	Lease          *LeaseReport     `json:"lease,omitempty"`
	Instances      []InstanceReport `json:"instances"`
	Events         []EventReport    `json:"events,omitempty"`
	Warnings       []string         `json:"warnings,omitempty"`
}

// LeaseReport is the primary Lease.
type LeaseReport struct {
	Name      string     `json:"name"`
	Holder    string     `json:"holder"`
	HolderIP  string     `json:"holderIP,omitempty"`
	RenewTime *time.Time `json:"renewTime,omitempty"`
	// AgeSeconds is now − renewTime.
	AgeSeconds           *float64 `json:"ageSeconds,omitempty"`
	LeaseDurationSeconds int32    `json:"leaseDurationSeconds,omitempty"`
}

// InstanceReport is one instance.
type InstanceReport struct {
	Pod string `json:"pod"`
	// Role is the Pod's pgwarden.io/instance-role label (what the instance says it is).
	Role string `json:"role"`
	// DesiredRole is the Pod's pgwarden.io/role annotation.
	DesiredRole string `json:"desiredRole"`
	// Ready is the Pod's Ready condition.
	Ready    bool   `json:"ready"`
	PodPhase string `json:"podPhase,omitempty"`
	// Reachable is false when /status did not answer; Error says why.
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	// From /status.
	StatusRole  string `json:"statusRole,omitempty"`
	Phase       string `json:"phase,omitempty"`
	Timeline    uint32 `json:"timeline,omitempty"`
	CurrentLSN  string `json:"currentLSN,omitempty"`
	ReceivedLSN string `json:"receivedLSN,omitempty"`
	ReplayLSN   string `json:"replayLSN,omitempty"`
	Upstream    string `json:"upstream,omitempty"`
	// LagBytes is the primary's currentLSN − this replica's replayLSN (never negative).
	LagBytes *int64 `json:"lagBytes,omitempty"`
	// LagSeconds is the replay lag in seconds, when the instance reports it.
	LagSeconds *float64 `json:"lagSeconds,omitempty"`
	// FenceRequested: the Pod carries pgwarden.io/fenced=true. Fenced: the instance reports
	// postgres stopped on request (/status fenced).
	FenceRequested bool `json:"fenceRequested,omitempty"`
	Fenced         bool `json:"fenced,omitempty"`
}

// EventReport is one Event about the cluster or one of its Pods.
type EventReport struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Reason  string    `json:"reason"`
	Object  string    `json:"object"`
	Message string    `json:"message"`
	Count   int32     `json:"count,omitempty"`
}

// Collect gathers the Report of cluster; events is how many of the latest Events to keep.
func (e *Env) Collect(ctx context.Context, cluster string, events int) (*Report, error) {
	r := &Report{Cluster: cluster, Namespace: e.Namespace, Phase: "Unknown"}

	clusterFound := false
	if e.Dynamic != nil {
		u, err := e.Dynamic.Resource(ClusterResource).Namespace(e.Namespace).Get(ctx, cluster, metav1.GetOptions{})
		switch {
		case err == nil:
			clusterFound = true
			var c pgv1.PostgresCluster
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &c); err != nil {
				r.Warnings = append(r.Warnings, fmt.Sprintf("cannot read PostgresCluster %s: %v", cluster, err))
			} else {
				if c.Status.Phase != "" {
					r.Phase = string(c.Status.Phase)
				}
				r.PhaseReason = c.Status.PhaseReason
				r.CurrentPrimary = c.Status.CurrentPrimary
				r.TargetPrimary = c.Status.TargetPrimary
			}
		case apierrors.IsNotFound(err):
			r.Warnings = append(r.Warnings, fmt.Sprintf("PostgresCluster %s not found in namespace %s", cluster, e.Namespace))
		default:
			r.Warnings = append(r.Warnings, fmt.Sprintf("cannot read PostgresCluster %s: %v", cluster, err))
		}
	}

	pods, err := e.clusterPods(ctx, cluster)
	if err != nil {
		return nil, err
	}
	if len(pods) == 0 && !clusterFound {
		return nil, fmt.Errorf("cluster %q not found in namespace %s: no PostgresCluster and no Pods labelled %s=%s", cluster, e.Namespace, ClusterLabel, cluster)
	}

	lease, err := e.Kube.CoordinationV1().Leases(e.Namespace).Get(ctx, LeaseName(cluster), metav1.GetOptions{})
	switch {
	case err == nil:
		r.Lease = leaseReport(lease.Name, lease.Spec.HolderIdentity, lease.Annotations[HolderIPAnnotation], lease.Spec.RenewTime, lease.Spec.LeaseDurationSeconds, e.now())
	case apierrors.IsNotFound(err):
		r.Warnings = append(r.Warnings, fmt.Sprintf("no primary Lease %s", LeaseName(cluster)))
	default:
		r.Warnings = append(r.Warnings, fmt.Sprintf("cannot read Lease %s: %v", LeaseName(cluster), err))
	}

	statuses := e.fetchAll(ctx, pods)
	r.Instances = make([]InstanceReport, len(pods))
	for i := range pods {
		r.Instances[i] = instanceReport(&pods[i], statuses[i].st, statuses[i].err)
	}
	holder := ""
	if r.Lease != nil {
		holder = r.Lease.Holder
	}
	ComputeLag(r.Instances, holder)

	if events > 0 {
		evs, err := e.clusterEvents(ctx, cluster, pods, events)
		if err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("cannot list Events: %v", err))
		}
		r.Events = evs
	}
	return r, nil
}

func leaseReport(name string, holder *string, ip string, renew *metav1.MicroTime, dur *int32, now time.Time) *LeaseReport {
	l := &LeaseReport{Name: name, HolderIP: ip}
	if holder != nil {
		l.Holder = *holder
	}
	if dur != nil {
		l.LeaseDurationSeconds = *dur
	}
	if renew != nil && !renew.IsZero() {
		t := renew.Time
		age := now.Sub(t).Seconds()
		l.RenewTime, l.AgeSeconds = &t, &age
	}
	return l
}

// clusterPods lists the cluster's Pods in instance order (<cluster>-1, -2, ..., -10).
func (e *Env) clusterPods(ctx context.Context, cluster string) ([]corev1.Pod, error) {
	list, err := e.Kube.CoreV1().Pods(e.Namespace).List(ctx, metav1.ListOptions{LabelSelector: ClusterLabel + "=" + cluster})
	if err != nil {
		return nil, fmt.Errorf("cannot list the Pods of %s: %w", cluster, err)
	}
	pods := list.Items
	sort.Slice(pods, func(i, j int) bool {
		a, b := instanceIndex(cluster, pods[i].Name), instanceIndex(cluster, pods[j].Name)
		if a != b {
			return a < b
		}
		return pods[i].Name < pods[j].Name
	})
	return pods, nil
}

func instanceIndex(cluster, pod string) int {
	rest, ok := strings.CutPrefix(pod, cluster+"-")
	if !ok {
		return 1 << 30
	}
	n, err := strconv.Atoi(rest)
	if err != nil {
		return 1 << 30
	}
	return n
}

type fetched struct {
	st  *InstanceStatus
	err error
}

// fetchAll reads every Pod's /status in parallel, bounded by StatusTimeout.
func (e *Env) fetchAll(ctx context.Context, pods []corev1.Pod) []fetched {
	timeout := e.StatusTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := make([]fetched, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := e.Fetcher.FetchStatus(ctx, e.Namespace, pods[i].Name)
			out[i] = fetched{st, err}
		}()
	}
	wg.Wait()
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func instanceReport(p *corev1.Pod, st *InstanceStatus, err error) InstanceReport {
	ir := InstanceReport{
		Pod:         p.Name,
		Role:        p.Labels[ObservedRoleLabel],
		DesiredRole: p.Annotations[DesiredRoleAnnotation],
		Ready:       podReady(p),
		PodPhase:    string(p.Status.Phase),
	}
	ir.FenceRequested = p.Annotations[FencedAnnotation] == "true"
	if p.DeletionTimestamp != nil {
		ir.PodPhase = "Terminating"
	}
	if err != nil || st == nil {
		if err == nil {
			err = fmt.Errorf("no answer")
		}
		ir.Error = err.Error()
		return ir
	}
	ir.Reachable = true
	ir.StatusRole, ir.Phase, ir.Timeline = st.Role, st.Phase, st.Timeline
	ir.CurrentLSN, ir.ReceivedLSN, ir.ReplayLSN, ir.Upstream = st.CurrentLSN, st.ReceivedLSN, st.ReplayLSN, st.Upstream
	ir.LagSeconds = st.ReplayLagSeconds
	ir.Fenced = st.Fenced
	return ir
}

// ComputeLag sets LagBytes of every reachable replica: the primary's currentLSN minus the
// replica's replayLSN, never below zero (the two /status reads are not simultaneous). The primary
// is the reachable instance whose /status role is primary, the Lease holder if several are.
// Without a primary, or with an unparsable LSN, LagBytes stays nil.
func ComputeLag(instances []InstanceReport, leaseHolder string) {
	primary := -1
	for i, in := range instances {
		if in.Reachable && in.StatusRole == rolePrimary && in.CurrentLSN != "" {
			if primary < 0 || in.Pod == leaseHolder {
				primary = i
			}
		}
	}
	if primary < 0 {
		return
	}
	top, err := statusapi.ParseLSN(instances[primary].CurrentLSN)
	if err != nil {
		return
	}
	zero := int64(0)
	instances[primary].LagBytes = &zero
	for i := range instances {
		in := &instances[i]
		if i == primary || !in.Reachable || in.StatusRole != roleReplica || in.ReplayLSN == "" {
			continue
		}
		replay, err := statusapi.ParseLSN(in.ReplayLSN)
		if err != nil {
			continue
		}
		lag := LagBytes(top, replay)
		in.LagBytes = &lag
	}
}

// LagBytes is primary − replay in bytes, 0 if replay is ahead.
func LagBytes(primary, replay uint64) int64 {
	if replay >= primary {
		return 0
	}
	d := primary - replay
	if d > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(d)
}

// clusterEvents returns the latest n Events about the cluster object or its Pods, oldest first.
func (e *Env) clusterEvents(ctx context.Context, cluster string, pods []corev1.Pod, n int) ([]EventReport, error) {
	list, err := e.Kube.CoreV1().Events(e.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, p := range pods {
		names[p.Name] = true
	}
	var out []EventReport
	for _, ev := range list.Items {
		io := ev.InvolvedObject
		switch {
		case io.Kind == "Pod" && (names[io.Name] || instanceIndex(cluster, io.Name) < 1<<30):
		case io.Kind == "PostgresCluster" && io.Name == cluster:
		default:
			continue
		}
		out = append(out, EventReport{Time: eventTime(&ev), Type: ev.Type, Reason: ev.Reason,
			Object: strings.ToLower(io.Kind) + "/" + io.Name, Message: ev.Message, Count: ev.Count})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, nil
}

func eventTime(ev *corev1.Event) time.Time {
	switch {
	case ev.Series != nil && !ev.Series.LastObservedTime.IsZero():
		return ev.Series.LastObservedTime.Time
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.FirstTimestamp.IsZero():
		return ev.FirstTimestamp.Time
	}
	return ev.CreationTimestamp.Time
}
