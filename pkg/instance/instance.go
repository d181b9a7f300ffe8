package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/pkg/logging"
	"github.com/pgwarden/pgwarden/pkg/postgres"
	"github.com/pgwarden/pgwarden/pkg/reaper"
	"github.com/pgwarden/pgwarden/probes"
)

// Options are the inputs of `pgwarden instance run`; see the cli package for
// their flags and defaults.
type Options struct {
	DataDir         string
	BinDir          string
	Port            int
	SocketDir       string
	ListenAddresses string
	StatusAddr      string
	MetricsAddr     string
	StopDelay       time.Duration
	StartDelay      time.Duration
	SwitchoverDelay time.Duration
	PasswordFile    string
	ParametersFile  string
	// SyncNamesFile holds synchronous_standby_names, computed by the operator.
	SyncNamesFile string
	RunAs         string
	PodName       string
	Namespace     string
	Cluster       string
	LogLevel      string

	// Kubernetes mode (PodName set).
	Kubeconfig              string
	ReplicationPasswordFile string
	PodIP                   string
	LeaseDuration           time.Duration
	LeaseRenewDeadline      time.Duration
	LeaseRetryPeriod        time.Duration
}

// kubernetes reports whether o asks for Kubernetes mode.
func (o Options) kubernetes() bool { return o.PodName != "" || o.Namespace != "" || o.Cluster != "" }

// superuser is the bootstrap superuser's name.
const superuser = "postgres"

// parametersPollInterval is how often the parameters file is re-read. A
// mounted ConfigMap changes by a symlink swap that inotify watchers miss, and
// reading one small file every few seconds costs nothing.
const parametersPollInterval = 2 * time.Second

// httpShutdownTimeout bounds the graceful stop of the HTTP servers, the last
// thing that happens before exit.
const httpShutdownTimeout = 2 * time.Second

func (o Options) validate() error {
	var errs []error
	if o.DataDir == "" {
		errs = append(errs, errors.New("--pgdata (or PGDATA) is required"))
	} else if !filepath.IsAbs(o.DataDir) {
		errs = append(errs, fmt.Errorf("--pgdata %q must be an absolute path", o.DataDir))
	}
	if o.PasswordFile == "" {
		errs = append(errs, errors.New("--superuser-password-file is required (the superuser's password, e.g. from a mounted Secret)"))
	}
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", o.Port))
	}
	if o.SocketDir == "" || !filepath.IsAbs(o.SocketDir) {
		errs = append(errs, fmt.Errorf("--socket-dir %q must be an absolute path", o.SocketDir))
	}
	for name, d := range map[string]time.Duration{"--stop-delay": o.StopDelay, "--start-delay": o.StartDelay, "--switchover-delay": o.SwitchoverDelay} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d))
		}
	}
	if o.kubernetes() {
		if o.PodName == "" || o.Namespace == "" || o.Cluster == "" {
			errs = append(errs, fmt.Errorf("Kubernetes mode needs --pod-name, --namespace and --cluster together (got %q, %q, %q); give none of them to run standalone",
				o.PodName, o.Namespace, o.Cluster))
		}
		if o.ReplicationPasswordFile == "" {
			errs = append(errs, errors.New("--replication-password-file is required in Kubernetes mode (the replication role's password, e.g. from a mounted Secret)"))
		}
		if o.PodIP != "" && net.ParseIP(o.PodIP) == nil {
			errs = append(errs, fmt.Errorf("--pod-ip %q is not an IP address", o.PodIP))
		}
		if !(0 < o.LeaseRetryPeriod && o.LeaseRetryPeriod < o.LeaseRenewDeadline && o.LeaseRenewDeadline < o.LeaseDuration) {
			errs = append(errs, fmt.Errorf("want 0 < --lease-retry-period (%s) < --lease-renew-deadline (%s) < --lease-duration (%s)",
				o.LeaseRetryPeriod, o.LeaseRenewDeadline, o.LeaseDuration))
		}
	}
	return errors.Join(errs...)
}

// Main runs the instance manager and returns the process exit code.
func Main(o Options) int {
	level, err := logging.ParseLevel(o.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgwarden:", err)
		return lifecycle.ExitUsage
	}
	base, log := logging.Setup(level)
	ctx, hup, stop := notifyShutdown(log)
	defer stop()
	code, err := run(ctx, hup, o, base, log)
	if err != nil {
		log.Error("pgwarden failed", "error", err.Error(), "exit_code", code)
	}
	log.Info("pgwarden exits", "exit_code", code)
	return code
}

// run does the work of Main; base is the logger without a source, for postgres' lines.
func run(ctx context.Context, hup <-chan struct{}, o Options, base, log *slog.Logger) (int, error) {
	// Everything that can be checked is checked before anything is written.
	if err := o.validate(); err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	password, err := postgres.ReadPassword(o.PasswordFile)
	if err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	bin, err := postgres.FindBin(o.BinDir)
	if err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	user, err := postgres.RunAsUser(o.RunAs)
	if err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	var params map[string]string
	if o.ParametersFile != "" {
		if params, err = postgres.ReadParametersFile(o.ParametersFile); err != nil {
			return lifecycle.ExitCouldNotStart, err
		}
	}
	var syncNames string
	if o.SyncNamesFile != "" {
		if syncNames, err = postgres.ReadSynchronousStandbyNames(o.SyncNamesFile); err != nil {
			return lifecycle.ExitCouldNotStart, err
		}
	}
	state, err := postgres.InspectDataDir(o.DataDir, bin.Major)
	if err != nil {
		// A pg_rewind or clone killed half-way leaves such a directory on purpose-made
		// ground: the role controller replaces it with a fresh clone before anything runs
		// it. Any other unusable directory is left as it is, with the error.
		what, merr := interruptedRebuild(o.DataDir)
		if !o.kubernetes() || what == "" || merr != nil {
			return lifecycle.ExitCouldNotStart, err
		}
		log.Warn("the data directory is unusable after an interrupted rebuild; it will be replaced by a fresh clone",
			"interrupted", what, "error", err.Error())
		state = postgres.Existing
	}
	if err := portFree(o.ListenAddresses, o.Port); err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	statusLn, err := net.Listen("tcp", o.StatusAddr)
	if err != nil {
		return lifecycle.ExitCouldNotStart, fmt.Errorf("cannot serve probes on --status-addr %s: %w", o.StatusAddr, err)
	}
	defer statusLn.Close()
	metricsLn, err := net.Listen("tcp", o.MetricsAddr)
	if err != nil {
		return lifecycle.ExitCouldNotStart, fmt.Errorf("cannot serve metrics on --metrics-addr %s: %w", o.MetricsAddr, err)
	}
	defer metricsLn.Close()

	if err := reaper.Start(); err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	mode := "standalone"
	if o.kubernetes() {
		mode = "kubernetes"
	}
	log.Info("pgwarden starting", "pgdata", o.DataDir, "postgres_major", bin.Major, "bin_dir", bin.Dir,
		"pid", os.Getpid(), "mode", mode, "data_directory", state.String())

	var kube *kubeSetup
	if o.kubernetes() {
		// Everything about Kubernetes is checked before PGDATA is touched.
		if kube, err = newKubeSetup(o, log); err != nil {
			return lifecycle.ExitCouldNotStart, err
		}
	} else if state == postgres.Empty {
		began := time.Now()
		log.Info("initialising an empty data directory with initdb", "pgdata", o.DataDir)
		if err := postgres.InitDB(ctx, bin, postgres.InitOptions{DataDir: o.DataDir, PasswordFile: o.PasswordFile, Superuser: superuser, RunAs: user}); err != nil {
			return lifecycle.ExitCouldNotStart, err
		}
		log.Info("data directory initialised", "took", time.Since(began).Round(time.Millisecond).String())
	}
	if err := ensureSocketDir(o.SocketDir, user); err != nil {
		return lifecycle.ExitCouldNotStart, err
	}
	cfg := postgres.Config{Port: o.Port, ListenAddresses: o.ListenAddresses, SocketDir: o.SocketDir, Parameters: params}
	store := newConfStore(o.DataDir, cfg, syncNames, user, log)
	if kube == nil {
		if _, err := store.write(); err != nil {
			return lifecycle.ExitCouldNotStart, err
		}
		warnAutoConf(log, o.DataDir, render(cfg, syncNames).Managed)
	}

	// Postgres writes its log into a pipe; CopyPostgres re-emits it as JSON.
	logR, logW, err := os.Pipe()
	if err != nil {
		return lifecycle.ExitError, fmt.Errorf("cannot make a pipe for postgres' log: %w", err)
	}
	copied := make(chan struct{})
	go func() {
		logging.CopyPostgres(logR, base)
		close(copied)
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	connConfig := func(context.Context) (*pgx.ConnConfig, error) {
		return postgres.ConnConfig(o.SocketDir, o.Port, superuser, password)
	}
	socket := probes.SocketPath(o.SocketDir, o.Port)
	prober := newProber(socket, connConfig, reg, log)
	var cred *syscall.Credential
	if user != nil {
		cred = &syscall.Credential{Uid: user.UID, Gid: user.GID, Groups: []uint32{user.GID}}
	}
	sup := lifecycle.New(lifecycle.Config{
		Postgres:   bin.Path("postgres"),
		DataDir:    o.DataDir,
		Env:        postgres.Env(bin, user),
		Credential: cred,
		Output:     logW,
		StartDelay: o.StartDelay,
		StopDelay:  o.StopDelay,
		StartHeld:  kube != nil, // the role controller prepares PGDATA, then starts postgres
		Answers: func(ctx context.Context) bool {
			return probes.Ping(ctx, "unix", socket).Answered()
		},
		Checkpoint: func(ctx context.Context) error { return checkpointIfPrimary(ctx, connConfig) },
		Started: func(int) {
			// Readiness need not wait for the prober's next interval.
			prober.Resume()
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				prober.CheckNow(ctx)
			}()
		},
		Stopping: func(ctx context.Context) {
			prober.ResetStartup()
			prober.Suspend(ctx)
		},
		Logger:  log,
		Metrics: lifecycle.NewMetrics(reg),
	})

	var ctrl *controller
	if kube != nil {
		ctrl = newController(controllerConfig{
			o: o, bin: bin, user: user, store: store, sup: sup, prober: prober, kube: kube,
			connConfig: connConfig, log: log,
		})
	}

	// Between a postmaster's death and the next check, the prober's cached
	// state would still say ready: the supervisor knows better.
	prober.SetReadinessGate(func() error {
		if ctrl != nil {
			if why := ctrl.heldReason(); why != "" {
				return errors.New(why)
			}
		}
		if sup.PID() == 0 {
			return errors.New("postgres is not running")
		}
		if ctrl != nil {
			return ctrl.readiness()
		}
		return nil
	})
	// A fenced or rejoining instance keeps postgres stopped on purpose:
	// liveness must not make the kubelet restart the container for it.
	prober.SetLivenessExemption(func() string {
		if ctrl != nil && sup.PID() == 0 {
			return ctrl.stoppedReason()
		}
		return ""
	})
	reg.MustRegister(&instanceCollector{prober: prober, sup: sup, ctrl: ctrl, now: time.Now})

	// The long-lived parts. Workers stop first, the HTTP servers last. The
	// role controller takes its decisions with ctx (it stops deciding when
	// shutdown begins) but holds the primary Lease with bg, until postgres
	// is down: a primary must keep renewing, or fence, while it shuts down.
	bg, stopBg := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = prober.Start(bg) }()
	go func() {
		defer wg.Done()
		watchParameters(bg, hup, log, o, store, sup)
	}()
	// decide ends with ctx, or when the supervisor gave up by itself.
	decide, stopDeciding := context.WithCancel(ctx)
	defer stopDeciding()
	if ctrl != nil {
		wg.Add(2)
		go func() { defer wg.Done(); _ = kube.watcher.Start(bg) }()
		go func() { defer wg.Done(); ctrl.run(decide, bg) }()
	}

	mux := http.NewServeMux()
	mux.Handle("/", prober.Handler())
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { serveStatus(w, prober, sup, ctrl) })
	statusSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	metricsSrv := &http.Server{Handler: metricsMux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = statusSrv.Serve(statusLn) }()
	go func() { _ = metricsSrv.Serve(metricsLn) }()

	runDone := make(chan struct{})
	if ctrl != nil {
		go ctrl.hurryWhenReplaced(ctx, sup, runDone)
	}
	code, err := sup.Run(ctx)
	close(runDone)
	stopDeciding()
	if ctrl != nil {
		ctrl.afterStop()
	}

	stopBg()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
	defer cancel()
	_ = statusSrv.Shutdown(sctx)
	_ = metricsSrv.Shutdown(sctx)
	logW.Close()
	select {
	case <-copied:
	case <-sctx.Done():
	}
	return code, err
}

// portFree tells whether postgres could listen on port at addresses
// (listen_addresses syntax: "*", "" or a comma-separated list of hosts).
func portFree(addresses string, port int) error {
	var hosts []string
	switch strings.TrimSpace(addresses) {
	case "":
		return nil // no TCP at all
	case "*":
		hosts = []string{""}
	default:
		for _, h := range strings.Split(addresses, ",") {
			if h = strings.TrimSpace(h); h == "0.0.0.0" || h == "::" {
				h = ""
			}
			hosts = append(hosts, h)
		}
	}
	for _, h := range hosts {
		l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("cannot use port %d: %w (is another server using it?)", port, err)
		}
		l.Close()
	}
	return nil
}

// ensureSocketDir creates the socket directory, owned by the user that runs
// postgres, when it does not exist. An existing directory is left alone.
func ensureSocketDir(dir string, user *postgres.User) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o2775); err != nil {
		return fmt.Errorf("cannot create the socket directory: %w", err)
	}
	if err := user.Chown(dir); err != nil {
		return fmt.Errorf("cannot give the socket directory to the user that runs postgres: %w", err)
	}
	return nil
}

// warnAutoConf says when ALTER SYSTEM settings override what pgwarden manages.
func warnAutoConf(log *slog.Logger, dataDir string, managed map[string]string) {
	over, err := postgres.AutoConfOverrides(dataDir, managed)
	if err != nil {
		log.Warn("cannot check ALTER SYSTEM settings", "error", err)
		return
	}
	if len(over) > 0 {
		log.Warn("postgresql.auto.conf (ALTER SYSTEM) overrides settings pgwarden manages; remove them with ALTER SYSTEM RESET",
			"parameters", strings.Join(over, ","))
	}
}

// checkpointIfPrimary runs CHECKPOINT when the server is not in recovery, so
// that the shutdown checkpoint that follows has little left to write.
func checkpointIfPrimary(ctx context.Context, connConfig func(context.Context) (*pgx.ConnConfig, error)) error {
	cc, err := connConfig(ctx)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("cannot connect to checkpoint: %w", err)
	}
	defer conn.Close(context.Background())
	inRecovery, err := postgres.IsInRecovery(ctx, conn)
	if err != nil || inRecovery {
		return err
	}
	return postgres.Checkpoint(ctx, conn)
}

// watchParameters re-reads the user's parameters file and the operator's
// synchronous_standby_names file every few seconds and on SIGHUP; when one
// changes, it rewrites the configuration and reloads postgres. A bad file is
// reported and changes nothing.
func watchParameters(ctx context.Context, hup <-chan struct{}, log *slog.Logger, o Options, store *confStore, sup *lifecycle.Supervisor) {
	type source struct {
		file  string
		what  string
		apply func() (bool, error) // reads file and hands it to the store
	}
	var sources []*source
	if o.ParametersFile != "" {
		sources = append(sources, &source{file: o.ParametersFile, what: "the parameters file", apply: func() (bool, error) {
			params, err := postgres.ReadParametersFile(o.ParametersFile)
			if err != nil {
				return false, err
			}
			return store.setParameters(params)
		}})
	}
	if o.SyncNamesFile != "" {
		sources = append(sources, &source{file: o.SyncNamesFile, what: "synchronous_standby_names", apply: func() (bool, error) {
			names, err := postgres.ReadSynchronousStandbyNames(o.SyncNamesFile)
			if err != nil {
				return false, err
			}
			return store.setSynchronous(names)
		}})
	}
	if len(sources) == 0 {
		return
	}
	t := time.NewTicker(parametersPollInterval)
	defer t.Stop()
	lastErr := make(map[*source]string)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-hup:
		}
		for _, src := range sources {
			changed, err := src.apply()
			if err != nil {
				if err.Error() != lastErr[src] {
					log.Error("cannot apply "+src.what+"; keeping the current configuration", "file", src.file, "error", err.Error())
					lastErr[src] = err.Error()
				}
				continue
			}
			delete(lastErr, src)
			if !changed {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = sup.Reload(rctx)
			cancel()
			if err != nil {
				log.Warn("configuration written; postgres will read it when it starts", "error", err.Error())
				continue
			}
			log.Info(src.what+" changed: configuration reloaded", "file", src.file)
		}
	}
}
