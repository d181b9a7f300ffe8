//go:build node

package node_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// flightRecorder follows the logs of a cluster's instance pods and of the operator's pods from
// just before a fault. A run that fails, or is slower than its scenario allows, leaves them
// behind with the namespace's Events: the old primary's log ends with its pod, and the node
// removes it as soon as a deleted pod is gone, so it cannot be fetched afterwards.
type flightRecorder struct {
	e      *env
	since  time.Time
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	logs   map[string]*bytes.Buffer // "<namespace>_<pod>_<uid prefix>_<container>"
	// restarts of each followed container when following began: a follow ends with the
	// container, so the logs of later containers of the same pod are fetched by save.
	restarts map[string]int32
}

// maxFlightLog bounds each followed log; a soak runs for hours.
const maxFlightLog = 8 << 20

func (e *env) startFlightRecorder() *flightRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flightRecorder{e: e, since: time.Now().Add(-5 * time.Second), cancel: cancel, logs: map[string]*bytes.Buffer{},
		restarts: map[string]int32{}}
	for _, src := range []struct{ ns, selector string }{
		{e.ns, clusterLabel + "=" + e.cluster},
		{operatorNamespace, "app.kubernetes.io/name=" + operatorName},
	} {
		l, err := e.cs.CoreV1().Pods(src.ns).List(ctx, metav1.ListOptions{LabelSelector: src.selector})
		if err != nil {
			e.t.Logf("flight recorder: cannot list pods in %s: %v", src.ns, err)
			continue
		}
		for _, p := range l.Items {
			for _, c := range p.Spec.Containers {
				f.restarts[logKey(&p, c.Name)] = restarts(&p, c.Name)
				f.follow(ctx, p, c.Name)
			}
		}
	}
	return f
}

func logKey(p *corev1.Pod, container string) string {
	return fmt.Sprintf("%s_%s_%.8s_%s", p.Namespace, p.Name, p.UID, container)
}

func (f *flightRecorder) follow(ctx context.Context, p corev1.Pod, container string) {
	buf := &bytes.Buffer{}
	f.mu.Lock()
	f.logs[logKey(&p, container)] = buf
	f.mu.Unlock()
	since := metav1.NewTime(f.since)
	req := f.e.cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container, Follow: true, SinceTime: &since, Timestamps: true})
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		rc, err := req.Stream(ctx)
		if err != nil {
			f.write(buf, []byte(fmt.Sprintf("flight recorder: cannot follow the log: %v\n", err)))
			return
		}
		defer rc.Close()
		chunk := make([]byte, 32<<10)
		for {
			n, err := rc.Read(chunk)
			f.write(buf, chunk[:n])
			if err != nil {
				return // the container ended (the pod is gone) or stop() cancelled
			}
		}
	}()
}

func (f *flightRecorder) write(buf *bytes.Buffer, b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if buf.Len()+len(b) <= maxFlightLog {
		buf.Write(b)
	}
}

// stop ends the following.
func (f *flightRecorder) stop() {
	f.cancel()
	f.wg.Wait()
}

// save writes the followed logs, the logs since the fault of pods that came up after it, and the
// Events of the cluster's namespace into dir. It returns the directory.
func (f *flightRecorder) save(dir string) string {
	f.stop()
	e := f.e
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Logf("flight recorder: %v", err)
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.mu.Lock()
	for k, b := range f.logs {
		_ = os.WriteFile(filepath.Join(dir, k+".log"), b.Bytes(), 0o644)
	}
	f.mu.Unlock()
	// Pods that started after the recorder (a recreated instance, a restarted operator).
	since := metav1.NewTime(f.since)
	for _, ns := range []string{e.ns, operatorNamespace} {
		l, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, p := range l.Items {
			for _, c := range p.Spec.Containers {
				k := logKey(&p, c.Name)
				fetch := func(name string, previous bool) {
					b, err := e.cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, SinceTime: &since,
						Timestamps: true, Previous: previous}).DoRaw(ctx)
					if err != nil {
						b = []byte(fmt.Sprintf("flight recorder: cannot read the log: %v\n", err))
					}
					_ = os.WriteFile(filepath.Join(dir, name), b, 0o644)
				}
				before, followed := f.restarts[k]
				switch n := restarts(&p, c.Name); {
				case !followed:
					fetch(k+".log", false)
				case n > before:
					// The followed container ended; the pod's later ones are not in the follow.
					if n > before+1 {
						fetch(k+".previous.log", true)
					}
					fetch(k+".current.log", false)
				}
			}
		}
	}
	var out strings.Builder
	if el, err := e.cs.CoreV1().Events(e.ns).List(ctx, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&out, "cannot list events: %v\n", err)
	} else {
		items := el.Items
		slices.SortFunc(items, func(a, b corev1.Event) int { return eventTime(a).Compare(eventTime(b)) })
		for _, ev := range items {
			if eventTime(ev).Before(f.since) {
				continue
			}
			fmt.Fprintf(&out, "%s %s %s %s/%s: %s\n", eventTime(ev).UTC().Format("15:04:05.000"), ev.Type, ev.Reason,
				ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Message)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "events.txt"), []byte(out.String()), 0o644)
	return dir
}

func eventTime(ev corev1.Event) time.Time {
	switch {
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	}
	return ev.CreationTimestamp.Time
}
