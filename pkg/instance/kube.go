package instance

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pgwarden/pgwarden/pkg/postgres"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// kubeSetup is what Kubernetes mode needs besides Options, all checked before
// anything is written: the API client, the own Pod's watcher, one Event
// recorder (shared by the watcher, the Lease and the role controller) and the
// replication role's password.
type kubeSetup struct {
	client       *roles.Client
	recorder     *roles.Recorder
	watcher      *roles.PodWatcher
	replPassword string
}

// apiQPS and apiBurst: the instance makes a handful of requests per second at
// most (the Lease every retry period, faster polling for a few seconds around
// a switchover); client-go's default of 5 QPS would throttle that polling.
const (
	apiQPS   = 50
	apiBurst = 100
)

func newKubeSetup(o Options, log *slog.Logger) (*kubeSetup, error) {
	repl, err := postgres.ReadPassword(o.ReplicationPasswordFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read --replication-password-file: %w", err)
	}
	var cfg *rest.Config
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("cannot configure the Kubernetes client (--kubeconfig %q, else in-cluster): %w", o.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = apiQPS, apiBurst
	cfg.UserAgent = "pgwarden-instance/" + o.PodName
	client, err := roles.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot create the Kubernetes client: %w", err)
	}
	rec := roles.NewRecorder(client, o.Namespace, o.PodName, log)
	return &kubeSetup{
		client:       client,
		recorder:     rec,
		watcher:      roles.NewPodWatcher(client, o.Namespace, o.PodName, rec, log),
		replPassword: repl,
	}, nil
}
