package operator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// FieldOwner is the operator's field manager name in managedFields.
const FieldOwner = "pgwarden-operator"

// Requeue periods. Leases expire and LSNs move without any watch event, so the operator also
// looks periodically.
const (
	// steadyResync: how stale per-instance LSNs in status and lease-expiry detection may be in
	// a healthy cluster.
	steadyResync = 10 * time.Second
	// busyResync: while a failover or switchover runs, or the primary is failing.
	busyResync = 2 * time.Second
)

// Reconciler reconciles PostgresClusters.
type Reconciler struct {
	Client client.Client
	// APIReader reads uncached: the cluster itself (its status holds the decisions, which must
	// not be read stale), user-provided Secrets (not cached) and Leases (not watched).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// Status asks instances for their /status; StatusTimeout bounds each request.
	Status        StatusClient
	StatusTimeout time.Duration
	// DefaultImage is used when spec.image is empty.
	DefaultImage string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives every Event the operator records (its decisions), so that the operator's log
	// says why without the Events, which expire after an hour. The zero Logger discards.
	Log logr.Logger
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// +kubebuilder:rbac:groups=pgwarden.io,resources=postgresclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=pgwarden.io,resources=postgresclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=pgwarden.io,resources=postgresclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods;persistentvolumeclaims;services;configmaps;secrets;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
//
// The operator must be able to grant what its Role for the instances grants (RBAC escalation
// check): pods list/watch/patch, leases get/update/create, events create — all covered above.

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	start := time.Now()
	defer func() { observeReconcile(start, err) }()
	log := logr.FromContextOrDiscard(ctx)

	c := &pgv1.PostgresCluster{}
	if err := r.APIReader.Get(ctx, req.NamespacedName, c); err != nil {
		if apierrors.IsNotFound(err) {
			forgetCluster(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if c.DeletionTimestamp != nil {
		forgetCluster(c.Namespace, c.Name)
		return ctrl.Result{}, nil // owned objects go with it (owner references)
	}
	before := c.Status.DeepCopy()
	c.Status.ObservedGeneration = c.Generation

	secretsOK, err := r.reconcileSecrets(ctx, c)
	if err != nil {
		return ctrl.Result{}, err
	}
	pods, pvcs, err := r.listInstances(ctx, c)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.reconcileSupporting(ctx, c, pods); err != nil {
		return ctrl.Result{}, err
	}

	statuses := fetchStatuses(ctx, r.Status, podsWithIP(pods), r.StatusTimeout)
	out, err := r.reconcileRoles(ctx, c, pods)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.reconcileInstances(ctx, c, pods, pvcs, secretsOK, before.ObservedGeneration); err != nil {
		return ctrl.Result{}, err
	}
	if out.phase == "" && secretsOK {
		steady := out.requeue // when to judge the primary's Lease again
		if out, err = r.rollingUpdate(ctx, c, pods, statuses); err != nil {
			return ctrl.Result{}, err
		}
		if steady > 0 && (out.requeue == 0 || steady < out.requeue) {
			out.requeue = steady
		}
	}
	r.updateObservedStatus(c, pods, pvcs, statuses, before, secretsOK, out)

	if !equalStatus(before, &c.Status) {
		if err := r.Client.Status().Update(ctx, c); err != nil {
			if apierrors.IsConflict(err) {
				log.V(1).Info("status conflict, requeue")
				return ctrl.Result{Requeue: true}, nil
			}
			return ctrl.Result{}, fmt.Errorf("cannot update status of %s: %w", c.Name, err)
		}
	}
	requeue := out.requeue
	if requeue == 0 {
		requeue = steadyResync
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// event records an Event on the cluster (and the related object, if any). Messages never carry
// Secret values.
func (r *Reconciler) event(c *pgv1.PostgresCluster, related runtime.Object, typ, reason, format string, args ...any) {
	if r.Recorder == nil {
		return
	}
	if v := reflect.ValueOf(related); related != nil && v.Kind() == reflect.Pointer && v.IsNil() {
		related = nil // a nil *Pod of a missing instance
	}
	r.Recorder.Eventf(c, related, typ, reason, reason, format, args...)
	kv := []any{"cluster", c.Namespace + "/" + c.Name, "reason", reason, "type", typ}
	if o, ok := related.(client.Object); ok && related != nil {
		kv = append(kv, "related", o.GetName())
	}
	r.Log.Info(fmt.Sprintf(format, args...), kv...)
}

// persistStatus writes status now: a decision is recorded before it is carried out.
func (r *Reconciler) persistStatus(ctx context.Context, c *pgv1.PostgresCluster) error {
	if err := r.Client.Status().Update(ctx, c); err != nil {
		return fmt.Errorf("cannot record decision in status of %s: %w", c.Name, err)
	}
	return nil
}

func (r *Reconciler) listInstances(ctx context.Context, c *pgv1.PostgresCluster) (map[string]*corev1.Pod, map[string]*corev1.PersistentVolumeClaim, error) {
	var pl corev1.PodList
	if err := r.Client.List(ctx, &pl, client.InNamespace(c.Namespace), client.MatchingLabels(clusterLabels(c.Name))); err != nil {
		return nil, nil, fmt.Errorf("cannot list pods of %s: %w", c.Name, err)
	}
	var vl corev1.PersistentVolumeClaimList
	if err := r.Client.List(ctx, &vl, client.InNamespace(c.Namespace), client.MatchingLabels(clusterLabels(c.Name))); err != nil {
		return nil, nil, fmt.Errorf("cannot list PVCs of %s: %w", c.Name, err)
	}
	pods := map[string]*corev1.Pod{}
	for i := range pl.Items {
		if podIndex(c.Name, pl.Items[i].Name) > 0 {
			pods[pl.Items[i].Name] = &pl.Items[i]
		}
	}
	pvcs := map[string]*corev1.PersistentVolumeClaim{}
	for i := range vl.Items {
		if podIndex(c.Name, vl.Items[i].Name) > 0 {
			pvcs[vl.Items[i].Name] = &vl.Items[i]
		}
	}
	return pods, pvcs, nil
}

func podsWithIP(pods map[string]*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

// ensure creates obj or updates it with mutate, owned by c, and records an Event when it
// changed anything.
func (r *Reconciler) ensure(ctx context.Context, c *pgv1.PostgresCluster, obj client.Object, mutate func()) error {
	kind := fmt.Sprintf("%T", obj)
	op, err := controllerutil.CreateOrUpdate(ctx, r.Client, obj, func() error {
		mutate()
		// The cache sees only objects with the cluster label: without it, the next reconcile
		// would not find the object and try to create it again.
		obj.SetLabels(mergeLabels(obj.GetLabels(), clusterLabels(c.Name)))
		return controllerutil.SetControllerReference(c, obj, r.Scheme)
	})
	if err != nil {
		return fmt.Errorf("cannot reconcile %s %s: %w", kind, obj.GetName(), err)
	}
	if op != controllerutil.OperationResultNone {
		r.event(c, obj, corev1.EventTypeNormal, "Reconciled", "%s %s %s", kind[1:], obj.GetName(), op)
	}
	return nil
}

func mergeLabels(dst map[string]string, src map[string]string) map[string]string {
	if dst == nil {
		dst = map[string]string{}
	}
	for k, v := range src {
		dst[k] = v
	}
	return dst
}

// reconcileSecrets generates the Secrets the operator owns when they are missing and checks a
// user-provided superuser Secret. It never updates or deletes a Secret. ok is false when a
// Secret the pods need is missing or unusable; the reason is in the SecretsReady condition.
func (r *Reconciler) reconcileSecrets(ctx context.Context, c *pgv1.PostgresCluster) (ok bool, err error) {
	ok = true
	var problems []string
	check := func(name string, generate bool) error {
		s := &corev1.Secret{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: c.Namespace, Name: name}, s)
		switch {
		case err == nil:
			if len(s.Data[PasswordKey]) == 0 {
				problems = append(problems, fmt.Sprintf("Secret %s has no key %q", name, PasswordKey))
			}
			return nil
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("cannot read Secret %s: %w", name, err)
		case !generate:
			problems = append(problems, fmt.Sprintf("Secret %s (spec.superuserSecret) does not exist", name))
			return nil
		}
		pw, err := randomPassword()
		if err != nil {
			return err
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.Namespace,
				Labels: mergeLabels(clusterLabels(c.Name), map[string]string{ManagedByLabel: managedBy})},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{PasswordKey: []byte(pw)},
		}
		if err := controllerutil.SetControllerReference(c, s, r.Scheme); err != nil {
			return err
		}
		if err := r.Client.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("cannot create Secret %s: %w", name, err)
		}
		r.event(c, s, corev1.EventTypeNormal, "SecretGenerated", "generated Secret %s with a random password", name)
		return nil
	}
	if err := check(superuserSecretName(c), superuserSecretGenerated(c)); err != nil {
		return false, err
	}
	if err := check(replicationSecretName(c.Name), true); err != nil {
		return false, err
	}
	cond := metav1.Condition{Type: pgv1.ConditionSecretsReady, Status: metav1.ConditionTrue, Reason: "Available",
		Message: "the superuser and replication Secrets exist", ObservedGeneration: c.Generation}
	if len(problems) > 0 {
		ok = false
		msg := strings.Join(problems, "; ")
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "SecretMissing", msg
		if prev := meta.FindStatusCondition(c.Status.Conditions, pgv1.ConditionSecretsReady); prev == nil || prev.Message != msg {
			r.event(c, nil, corev1.EventTypeWarning, "SecretMissing", "%s; no new instance is created until it is fixed, nothing is deleted", msg)
		}
	}
	meta.SetStatusCondition(&c.Status.Conditions, cond)
	return ok, nil
}

// randomPassword returns 32 random bytes, base64url encoded.
func randomPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cannot generate a password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// instanceNames is <cluster>-1..N plus any existing instance beyond N (still being removed).
func instanceNames(c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) []string {
	max := int(c.Spec.Instances)
	for name := range pods {
		if n := podIndex(c.Name, name); n > max {
			max = n
		}
	}
	names := make([]string, 0, max)
	for i := 1; i <= max; i++ {
		names = append(names, podName(c.Name, i))
	}
	return names
}

// reconcileSupporting reconciles everything but the instances: ServiceAccount, Role,
// RoleBinding, ConfigMap, Services, PodDisruptionBudgets.
func (r *Reconciler) reconcileSupporting(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) error {
	sa := newServiceAccount(c)
	if err := r.ensure(ctx, c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.Name, Namespace: c.Namespace}},
		func() {}); err != nil {
		return err
	}
	wantRole := newRole(c, instanceNames(c, pods))
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: wantRole.Name, Namespace: c.Namespace}}
	if err := r.ensure(ctx, c, role, func() {
		role.Labels = mergeLabels(role.Labels, wantRole.Labels)
		role.Rules = wantRole.Rules
	}); err != nil {
		return err
	}
	wantRB := newRoleBinding(c)
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: wantRB.Name, Namespace: c.Namespace}}
	if err := r.ensure(ctx, c, rb, func() {
		rb.Labels = mergeLabels(rb.Labels, wantRB.Labels)
		if rb.CreationTimestamp.IsZero() {
			rb.RoleRef = wantRB.RoleRef // immutable once created
		}
		rb.Subjects = wantRB.Subjects
	}); err != nil {
		return err
	}
	wantCM := newConfigMap(c)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: wantCM.Name, Namespace: c.Namespace}}
	if err := r.ensure(ctx, c, cm, func() {
		cm.Labels = mergeLabels(cm.Labels, wantCM.Labels)
		cm.Data = wantCM.Data
	}); err != nil {
		return err
	}
	for _, want := range newServices(c) {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: want.Name, Namespace: c.Namespace}}
		if err := r.ensure(ctx, c, svc, func() {
			svc.Labels = mergeLabels(svc.Labels, want.Labels)
			svc.Spec.Selector = want.Spec.Selector
			svc.Spec.Ports = want.Spec.Ports
			if svc.Spec.Type == "" {
				svc.Spec.Type = want.Spec.Type
			}
		}); err != nil {
			return err
		}
	}
	for _, want := range newPDBs(c) {
		pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: want.Name, Namespace: c.Namespace}}
		if err := r.ensure(ctx, c, pdb, func() {
			pdb.Labels = mergeLabels(pdb.Labels, want.Labels)
			pdb.Spec.Selector = want.Spec.Selector
			pdb.Spec.MinAvailable = want.Spec.MinAvailable
			pdb.Spec.MaxUnavailable = want.Spec.MaxUnavailable
		}); err != nil {
			return err
		}
	}
	return nil
}

func (r *Reconciler) image(c *pgv1.PostgresCluster) string {
	if c.Spec.Image != "" {
		return c.Spec.Image
	}
	return r.DefaultImage
}

// reconcileInstances creates missing PVCs and Pods and removes instances beyond spec.instances.
// Until the first primary is established only the target primary exists (the first instance is
// created alone); replicas follow once it is primary. Nothing is created while a Secret the
// Pods mount is missing.
func (r *Reconciler) reconcileInstances(ctx context.Context, c *pgv1.PostgresCluster,
	pods map[string]*corev1.Pod, pvcs map[string]*corev1.PersistentVolumeClaim, secretsOK bool, observedBefore int64) error {
	n := int(c.Spec.Instances)
	established := c.Status.CurrentPrimary != ""
	for i := 1; i <= n; i++ {
		name := podName(c.Name, i)
		if !established && name != c.Status.TargetPrimary {
			continue
		}
		if !secretsOK {
			continue
		}
		if err := r.ensurePVC(ctx, c, name, pvcs[name]); err != nil {
			return err
		}
		if pods[name] != nil {
			continue
		}
		role := roles.RoleReplica
		if name == c.Status.TargetPrimary {
			if established && !c.Spec.Failover.IsDisabled && c.Status.CurrentPrimary == name && n > 1 {
				// The established primary's Pod is gone: failover decides (reconcileRoles
				// runs first and has already moved TargetPrimary if it could). Recreating it
				// as primary here would race the failover; it comes back as a replica after.
				// A single instance has nothing to fail over to: it is recreated in place.
				continue
			}
			role = roles.RolePrimary
		}
		pod := newPod(c, name, role, r.image(c))
		pod.Annotations[SpecHashAnnotation] = podSpecHash(c, r.image(c))
		if err := controllerutil.SetControllerReference(c, pod, r.Scheme); err != nil {
			return err
		}
		if err := r.Client.Create(ctx, pod); err != nil {
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			r.event(c, nil, corev1.EventTypeWarning, "CreateFailed", "cannot create pod %s: %v", name, err)
			return fmt.Errorf("cannot create pod %s: %w", name, err)
		}
		r.event(c, pod, corev1.EventTypeNormal, "InstanceCreated", "created pod %s as %s", name, role)
	}
	// Scale down: only in a steady state, never the primary.
	if c.Status.TargetPrimary != c.Status.CurrentPrimary || !established {
		return nil
	}
	for name, pod := range pods {
		if podIndex(c.Name, name) <= n {
			continue
		}
		if name == c.Status.TargetPrimary {
			// Reported once per spec generation (not on every resync).
			if pod.DeletionTimestamp == nil && c.Status.ObservedGeneration != observedBefore {
				r.event(c, pod, corev1.EventTypeWarning, "ScaleDownBlocked",
					"pod %s is the primary and beyond spec.instances=%d; switch over to another instance first (spec.failover.promotePod)", name, n)
			}
			continue
		}
		if pod.DeletionTimestamp == nil {
			if err := r.Client.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("cannot delete pod %s: %w", name, err)
			}
			r.event(c, pod, corev1.EventTypeNormal, "InstanceRemoved", "scaled down: deleted pod %s", name)
		}
	}
	for name, pvc := range pvcs {
		if podIndex(c.Name, name) <= n || name == c.Status.TargetPrimary || pvc.DeletionTimestamp != nil {
			continue
		}
		if err := r.Client.Delete(ctx, pvc); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("cannot delete PVC %s: %w", name, err)
		}
		r.event(c, pvc, corev1.EventTypeNormal, "VolumeRemoved", "scaled down: deleted PVC %s", name)
	}
	return nil
}

// ensurePVC creates the PVC if missing and grows it when spec.storage.size grew (shrinking is
// rejected by the schema).
func (r *Reconciler) ensurePVC(ctx context.Context, c *pgv1.PostgresCluster, name string, pvc *corev1.PersistentVolumeClaim) error {
	want := newPVC(c, name)
	if pvc == nil {
		if err := controllerutil.SetControllerReference(c, want, r.Scheme); err != nil {
			return err
		}
		if err := r.Client.Create(ctx, want); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return fmt.Errorf("cannot create PVC %s: %w", name, err)
		}
		r.event(c, want, corev1.EventTypeNormal, "VolumeCreated", "created PVC %s (%s)", name, c.Spec.Storage.Size.String())
		return nil
	}
	have := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if pvc.DeletionTimestamp == nil && c.Spec.Storage.Size.Cmp(have) > 0 {
		patch := client.MergeFrom(pvc.DeepCopy())
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = c.Spec.Storage.Size
		if err := r.Client.Patch(ctx, pvc, patch); err != nil {
			r.event(c, pvc, corev1.EventTypeWarning, "VolumeResizeFailed", "cannot grow PVC %s to %s: %v", name, c.Spec.Storage.Size.String(), err)
			return nil
		}
		r.event(c, pvc, corev1.EventTypeNormal, "VolumeResized", "PVC %s grows to %s", name, c.Spec.Storage.Size.String())
	}
	return nil
}

// setDesiredRole patches the pgwarden.io/role annotation of pod.
func (r *Reconciler) setDesiredRole(ctx context.Context, pod *corev1.Pod, role roles.Role) error {
	if pod.Annotations[roles.DesiredRoleAnnotation] == string(role) {
		return nil
	}
	patch := client.MergeFrom(pod.DeepCopy())
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[roles.DesiredRoleAnnotation] = string(role)
	if err := r.Client.Patch(ctx, pod, patch, client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("cannot set role of %s to %s: %w", pod.Name, role, err)
	}
	return nil
}

// getLease reads the cluster's primary Lease; nil when it does not exist.
func (r *Reconciler) getLease(ctx context.Context, c *pgv1.PostgresCluster) (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: c.Namespace, Name: leaseName(c.Name)}, l)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read Lease %s: %w", leaseName(c.Name), err)
	}
	return l, nil
}
