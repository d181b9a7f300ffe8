package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/pgwarden/pgwarden/pkg/roles"
)

// watchLog records, with this host's clock (the probe's), every change of
// what routes the probe: the pods' observed role and readiness, the -rw
// Service's EndpointSlice and the Lease holder. It is for explaining a
// figure (compare with writes/<run>.tsv), not a measurement itself.
type watchLog struct {
	mu     sync.Mutex
	f      *os.File
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func (c *pgwardenCluster) startWatchLog(path string) {
	f, err := os.Create(path)
	if err != nil {
		c.o.Log("pgwarden: no watch log: %v", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchLog{f: f, cancel: cancel}
	c.watch = w
	sel := metav1.ListOptions{}
	w.loop(ctx, "pod", func(ctx context.Context) (watch.Interface, error) {
		return c.cs.CoreV1().Pods(c.ns).Watch(ctx, sel)
	}, func(o any) string {
		p, ok := o.(*corev1.Pod)
		if !ok {
			return ""
		}
		ready := "?"
		for _, cd := range p.Status.Conditions {
			if cd.Type == corev1.PodReady {
				ready = string(cd.Status)
			}
		}
		state := ""
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == pwContainer {
				switch {
				case cs.State.Running != nil:
					state = "running"
				case cs.State.Terminated != nil:
					state = "terminated"
				case cs.State.Waiting != nil:
					state = "waiting:" + cs.State.Waiting.Reason
				}
				state += fmt.Sprintf("/restarts=%d", cs.RestartCount)
			}
		}
		return fmt.Sprintf("%s role=%s desired=%s ready=%s container=%s", p.Name,
			p.Labels[roles.ObservedRoleLabel], p.Annotations[roles.DesiredRoleAnnotation], ready, state)
	})
	w.loop(ctx, "endpointslice", func(ctx context.Context) (watch.Interface, error) {
		return c.cs.DiscoveryV1().EndpointSlices(c.ns).Watch(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + pwCluster + "-rw"})
	}, func(o any) string {
		s, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			return ""
		}
		var eps []string
		for _, e := range s.Endpoints {
			r := "?"
			if e.Conditions.Ready != nil {
				r = fmt.Sprint(*e.Conditions.Ready)
			}
			eps = append(eps, strings.Join(e.Addresses, ",")+" ready="+r)
		}
		sort.Strings(eps)
		return fmt.Sprintf("%s-rw endpoints [%s]", pwCluster, strings.Join(eps, "; "))
	})
	w.loop(ctx, "lease", func(ctx context.Context) (watch.Interface, error) {
		return c.cs.CoordinationV1().Leases(c.ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + roles.LeaseName(pwCluster)})
	}, func(o any) string {
		l, ok := o.(*coordinationv1.Lease)
		if !ok {
			return ""
		}
		h := ""
		if l.Spec.HolderIdentity != nil {
			h = *l.Spec.HolderIdentity
		}
		return "holder=" + h
	})
}

func (w *watchLog) loop(ctx context.Context, kind string, start func(context.Context) (watch.Interface, error), describe func(any) string) {
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		last := map[string]string{}
		for ctx.Err() == nil {
			wi, err := start(ctx)
			if err != nil {
				_ = sleep(ctx, time.Second)
				continue
			}
			for ev := range wi.ResultChan() {
				if ev.Type == watch.Error || ev.Type == watch.Bookmark {
					continue
				}
				d := describe(ev.Object)
				key := kind
				if m, ok := ev.Object.(metav1.Object); ok {
					key += "/" + m.GetName()
				}
				if d == "" || (last[key] == d && ev.Type == watch.Modified) {
					continue
				}
				last[key] = d
				w.mu.Lock()
				fmt.Fprintf(w.f, "%s %-13s %-8s %s\n", time.Now().UTC().Format("15:04:05.000"), kind, ev.Type, d)
				w.mu.Unlock()
			}
			wi.Stop()
		}
	}()
}

func (w *watchLog) stop() {
	if w == nil {
		return
	}
	w.cancel()
	w.done.Wait()
	w.f.Close()
}
