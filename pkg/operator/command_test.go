package operator

import (
	"strings"
	"testing"
	"time"
)

func TestNewCommandFlags(t *testing.T) {
	cmd := NewCommand()
	for _, name := range []string{"kubeconfig", "namespace", "addr", "leader-elect", "lease-name", "lease-namespace",
		"lease-duration-seconds", "renew-interval-seconds", "release-timeout-seconds", "default-instance-image",
		"instance-status-port", "instance-status-timeout", "max-concurrent-reconciles", "log-level"} {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	for name, want := range map[string]string{"lease-duration-seconds": "15", "renew-interval-seconds": "5",
		"release-timeout-seconds": "5", "leader-elect": "false", "lease-name": "pgwarden-operator", "addr": ":8080"} {
		if got := cmd.Flags().Lookup(name).DefValue; got != want {
			t.Errorf("--%s defaults to %q, want %q", name, got, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := DefaultOptions()
	ok.LeaderElect, ok.LeaseNamespace = true, "ns"
	if err := ok.validate(); err != nil {
		t.Fatalf("defaults with leader election: %v", err)
	}
	tests := map[string]struct {
		change func(*Options)
		want   string
	}{
		"no lease namespace": {func(o *Options) { o.LeaseNamespace = "" }, "--lease-namespace"},
		"renew too slow":     {func(o *Options) { o.RenewInterval = 10 * time.Second }, "--lease-duration-seconds"},
		"no status timeout":  {func(o *Options) { o.StatusTimeout = 0 }, "--instance-status-timeout"},
	}
	for name, tt := range tests {
		o := ok
		tt.change(&o)
		if err := o.validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error naming %s", name, err, tt.want)
		}
	}
}
