package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
)

// Options configure the operator. The flags of NewCommand set them.
type Options struct {
	// Kubeconfig is a kubeconfig file; empty: $KUBECONFIG, then in-cluster.
	Kubeconfig string
	// Namespace restricts the operator to one namespace; empty: all.
	Namespace string
	// Addr serves /metrics, /healthz and /readyz; "0" disables it.
	Addr string

	// LeaderElect runs leader election on the Lease LeaseNamespace/LeaseName.
	LeaderElect    bool
	LeaseName      string
	LeaseNamespace string
	// LeaseDuration: how long a standby waits after the last renewal before it takes over.
	LeaseDuration time.Duration
	// RenewInterval: how often the leader renews (and standbys retry). The leader gives up
	// leadership when it could not renew for LeaseDuration - RenewInterval.
	RenewInterval time.Duration
	// ReleaseTimeout bounds the shutdown of the controllers; then the Lease is released so a
	// standby takes over at once.
	ReleaseTimeout time.Duration

	// DefaultImage is the instance image when spec.image is empty.
	DefaultImage string
	// StatusPort and StatusTimeout: GET http://<pod IP>:<StatusPort>/status, bounded.
	StatusPort    int
	StatusTimeout time.Duration
	// MaxConcurrentReconciles: clusters reconciled in parallel.
	MaxConcurrentReconciles int
	LogLevel                string

	// StatusClient replaces the HTTP status client (tests). Not a flag.
	StatusClient StatusClient
	// RestConfig replaces Kubeconfig (tests). Not a flag.
	RestConfig *rest.Config
}

// DefaultOptions are the flags' defaults (DESIGN.md, "The operator").
func DefaultOptions() Options {
	return Options{
		Addr:                    ":8080",
		LeaseName:               "pgwarden-operator",
		LeaseNamespace:          os.Getenv("POD_NAMESPACE"),
		LeaseDuration:           15 * time.Second,
		RenewInterval:           5 * time.Second,
		ReleaseTimeout:          5 * time.Second,
		DefaultImage:            "pgwarden.local/pgwarden:testbed",
		StatusPort:              statusPort,
		StatusTimeout:           2 * time.Second,
		MaxConcurrentReconciles: 4,
		LogLevel:                "info",
	}
}

// NewCommand returns `pgwarden operator`.
func NewCommand() *cobra.Command {
	o := DefaultOptions()
	var leaseSecs, renewSecs, releaseSecs int
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the PostgresCluster operator",
		Long: `The operator reconciles PostgresClusters (pgwarden.io/v1) to Secrets, RBAC, PVCs, Pods,
Services and PodDisruptionBudgets, and decides which instance is primary (failover,
switchover). It never touches PostgreSQL: it writes the desired role as the Pod
annotation pgwarden.io/role and the instances carry it out.

It serves /metrics, /healthz and /readyz on --addr. With --leader-elect several replicas
share the work through the Lease --lease-name in --lease-namespace; one is active.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.LeaseDuration = time.Duration(leaseSecs) * time.Second
			o.RenewInterval = time.Duration(renewSecs) * time.Second
			o.ReleaseTimeout = time.Duration(releaseSecs) * time.Second
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster configuration [KUBECONFIG]")
	f.StringVar(&o.Namespace, "namespace", os.Getenv("WATCH_NAMESPACE"), "watch only this namespace; empty: all [WATCH_NAMESPACE]")
	f.StringVar(&o.Addr, "addr", o.Addr, `address of /metrics, /healthz and /readyz; "0" disables`)
	f.BoolVar(&o.LeaderElect, "leader-elect", false, "elect a leader among the operator's replicas on a Lease (off: a single replica)")
	f.StringVar(&o.LeaseName, "lease-name", o.LeaseName, "name of the leader election Lease (leaseName)")
	f.StringVar(&o.LeaseNamespace, "lease-namespace", o.LeaseNamespace, "namespace of the leader election Lease [POD_NAMESPACE]")
	f.IntVar(&leaseSecs, "lease-duration-seconds", int(o.LeaseDuration/time.Second), "leaseDurationSeconds: a standby takes over this long after the leader's last renewal")
	f.IntVar(&renewSecs, "renew-interval-seconds", int(o.RenewInterval/time.Second), "renewIntervalSeconds: how often the leader renews the Lease")
	f.IntVar(&releaseSecs, "release-timeout-seconds", int(o.ReleaseTimeout/time.Second), "releaseTimeoutSeconds: on shutdown, how long the controllers may take to stop before the Lease is released")
	f.StringVar(&o.DefaultImage, "default-instance-image", envOr("PGWARDEN_INSTANCE_IMAGE", o.DefaultImage), "instance image when spec.image is empty [PGWARDEN_INSTANCE_IMAGE]")
	f.IntVar(&o.StatusPort, "instance-status-port", o.StatusPort, "port of the instances' /status")
	f.DurationVar(&o.StatusTimeout, "instance-status-timeout", o.StatusTimeout, "how long to wait for one instance's /status")
	f.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", o.MaxConcurrentReconciles, "clusters reconciled in parallel")
	f.StringVar(&o.LogLevel, "log-level", envOr("PGWARDEN_LOG_LEVEL", o.LogLevel), "debug, info, warn or error [PGWARDEN_LOG_LEVEL]")
	f.SortFlags = false
	return cmd
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (o Options) validate() error {
	var errs []error
	if o.LeaderElect {
		if o.LeaseName == "" {
			errs = append(errs, errors.New("--lease-name is required with --leader-elect"))
		}
		if o.LeaseNamespace == "" {
			errs = append(errs, errors.New("--lease-namespace (or POD_NAMESPACE) is required with --leader-elect"))
		}
		// client-go requires LeaseDuration > RenewDeadline > 1.2 * RetryPeriod.
		if o.RenewInterval <= 0 || o.LeaseDuration < 3*o.RenewInterval {
			errs = append(errs, fmt.Errorf("--lease-duration-seconds (%s) must be at least 3 times --renew-interval-seconds (%s)", o.LeaseDuration, o.RenewInterval))
		}
		if o.ReleaseTimeout < 0 {
			errs = append(errs, errors.New("--release-timeout-seconds must not be negative"))
		}
	}
	if o.StatusTimeout <= 0 {
		errs = append(errs, errors.New("--instance-status-timeout must be positive"))
	}
	if o.DefaultImage == "" {
		errs = append(errs, errors.New("--default-instance-image must not be empty"))
	}
	return errors.Join(errs...)
}

// NewScheme returns a scheme with the built-in types and pgwarden.io/v1.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = pgv1.AddToScheme(s)
	return s
}

func newLogger(level string) (logr.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return logr.Logger{}, fmt.Errorf("invalid --log-level %q: %w", level, err)
	}
	h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})
	return logr.FromSlogHandler(h), nil
}

// Run runs the operator until ctx is cancelled.
func Run(ctx context.Context, o Options) error {
	if err := o.validate(); err != nil {
		return err
	}
	log, err := newLogger(o.LogLevel)
	if err != nil {
		return err
	}
	ctrl.SetLogger(log)
	klog.SetLogger(log)
	mgr, err := NewManager(o, log)
	if err != nil {
		return err
	}
	log.Info("starting operator", "leaderElect", o.LeaderElect, "lease", o.LeaseNamespace+"/"+o.LeaseName, "namespace", o.Namespace)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("operator stopped: %w", err)
	}
	return nil
}

// NewManager assembles the manager: caches, the PostgresCluster controller, leader election,
// and the HTTP endpoints.
func NewManager(o Options, log logr.Logger) (manager.Manager, error) {
	cfg := o.RestConfig
	if cfg == nil {
		var err error
		if o.Kubeconfig != "" {
			cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		} else {
			cfg, err = rest.InClusterConfig()
		}
		if err != nil {
			return nil, fmt.Errorf("cannot load the Kubernetes client configuration: %w", err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "pgwarden-operator"

	// Only what carries the cluster label is cached: the operator's own objects. User Secrets
	// and Leases are read directly (APIReader).
	owned, _ := labels.NewRequirement(ClusterLabel, selection.Exists, nil)
	ownedSel := labels.NewSelector().Add(*owned)
	byObject := map[client.Object]cache.ByObject{}
	for _, obj := range []client.Object{&corev1.Pod{}, &corev1.PersistentVolumeClaim{}, &corev1.Secret{},
		&corev1.ConfigMap{}, &corev1.Service{}, &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{},
		&policyv1.PodDisruptionBudget{}} {
		byObject[obj] = cache.ByObject{Label: ownedSel}
	}
	cacheOpts := cache.Options{ByObject: byObject}
	if o.Namespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{o.Namespace: {}}
	}
	renewDeadline := o.LeaseDuration - o.RenewInterval
	releaseTimeout := o.ReleaseTimeout
	healthHandler := &healthz.Handler{Checks: map[string]healthz.Checker{"ping": healthz.Ping}}
	readyChecks := map[string]healthz.Checker{"ping": healthz.Ping}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme: NewScheme(),
		Logger: log,
		Cache:  cacheOpts,
		Metrics: metricsserver.Options{BindAddress: o.Addr, ExtraHandlers: map[string]http.Handler{
			// healthz.Handler serves the aggregate at "/" and each check at "/<name>".
			"/healthz":  http.StripPrefix("/healthz", healthHandler),
			"/healthz/": http.StripPrefix("/healthz", healthHandler),
			"/readyz":   http.StripPrefix("/readyz", &healthz.Handler{Checks: readyChecks}),
			"/readyz/":  http.StripPrefix("/readyz", &healthz.Handler{Checks: readyChecks}),
		}},
		HealthProbeBindAddress:        "0",
		LeaderElection:                o.LeaderElect,
		LeaderElectionID:              o.LeaseName,
		LeaderElectionNamespace:       o.LeaseNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &o.LeaseDuration,
		RenewDeadline:                 &renewDeadline,
		RetryPeriod:                   &o.RenewInterval,
		GracefulShutdownTimeout:       &releaseTimeout,
		Controller:                    config.Controller{SkipNameValidation: ptrTo(true)},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot create the manager: %w", err)
	}
	// Ready once the caches are synced: a replica that cannot see the API server is not ready.
	readyChecks["informers"] = func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("caches not synced")
		}
		return nil
	}
	sc := o.StatusClient
	if sc == nil {
		sc = &HTTPStatusClient{Port: o.StatusPort, Client: &http.Client{Timeout: o.StatusTimeout}}
	}
	r := &Reconciler{
		Client:        mgr.GetClient(),
		APIReader:     mgr.GetAPIReader(),
		Scheme:        mgr.GetScheme(),
		Recorder:      mgr.GetEventRecorder(FieldOwner),
		Status:        sc,
		StatusTimeout: o.StatusTimeout,
		DefaultImage:  o.DefaultImage,
		Log:           log.WithName("decisions"),
	}
	err = ctrl.NewControllerManagedBy(mgr).
		For(&pgv1.PostgresCluster{}).
		Owns(&corev1.Pod{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&corev1.Secret{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Named("postgrescluster").
		Complete(r)
	if err != nil {
		return nil, fmt.Errorf("cannot create the PostgresCluster controller: %w", err)
	}
	return mgr, nil
}

func ptrTo[T any](v T) *T { return &v }
