package operator

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

func TestFenceStatus(t *testing.T) {
	pod := func(ann ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "c-2", Annotations: map[string]string{}}}
		if len(ann) > 0 {
			p.Annotations[roles.FencedAnnotation] = ann[0]
		}
		return p
	}
	fencedStatus := statusResult{status: &InstanceStatus{Role: "replica", Fenced: true}}
	for _, tc := range []struct {
		name       string
		pod        *corev1.Pod
		ready      bool
		sr         statusResult
		has        bool
		fenced     bool
		down       bool
		msgContain string
	}{
		{name: "no annotation", pod: pod(), ready: true},
		{name: "false", pod: pod("false"), ready: true},
		{name: "requested, primary still running", pod: pod("true"), ready: true, fenced: true, msgContain: "keeps running"},
		{name: "requested, stopping", pod: pod("true"), fenced: true, down: true, msgContain: "waiting for postgres to stop"},
		{name: "stopped", pod: pod("true"), sr: fencedStatus, has: true, fenced: true, down: true, msgContain: "postgres stopped on request"},
		{name: "lifted, starting", pod: pod(), sr: fencedStatus, has: true, fenced: true, down: true, msgContain: "fence lifted"},
		{name: "invalid", pod: pod("yes"), sr: fencedStatus, has: true, msgContain: `invalid value "yes"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := pgv1.InstanceStatus{Name: "c-2", Ready: tc.ready}
			down := fenceStatus(&is, tc.pod, tc.sr, tc.has)
			if down != tc.down || is.Fenced != tc.fenced || !strings.Contains(is.Message, tc.msgContain) {
				t.Errorf("down %v, %+v; want down %v, fenced %v, message with %q", down, is, tc.down, tc.fenced, tc.msgContain)
			}
		})
	}
	if _, excluded, err := fenceRequest(pod("yes")); !excluded || err == nil {
		t.Error("an invalid value must keep the pod out of the candidates and be reported")
	}
	if requested, _, _ := fenceRequest(pod("yes")); requested {
		t.Error("an invalid value must not start a switchover")
	}
}
