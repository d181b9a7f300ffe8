package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/pkg/instance"
	"github.com/pgwarden/pgwarden/pkg/version"
)

// exitError carries an exit code out of a cobra command.
type exitError struct{ code int }

func (e exitError) Error() string { return "exit " + strconv.Itoa(e.code) }

// Main runs the command line with args and returns the process exit code.
func Main(args []string) int {
	root := newRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	err := root.Execute()
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		fmt.Fprintln(os.Stderr, "pgwarden:", err)
		return lifecycle.ExitUsage
	}
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "pgwarden",
		Short:         "High availability for PostgreSQL on Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	inst := &cobra.Command{Use: "instance", Short: "The instance manager: PID 1 of a Postgres container"}
	inst.AddCommand(newInstanceRun(), newInstanceStatus())
	root.AddCommand(inst, newOperatorCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}

// env returns the environment variable name's value, or def when unset or empty.
func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// envInt is env for integers; a malformed value is reported when flags are validated.
func envInt(name string, def int, bad *[]string) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		*bad = append(*bad, fmt.Sprintf("environment variable %s=%q is not an integer", name, v))
		return def
	}
	return n
}

func newInstanceRun() *cobra.Command {
	var o instance.Options
	var envErrs []string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run PostgreSQL as the container's PID 1: bootstrap, supervise, probe, shut down",
		Long: `Run owns the postmaster for the life of the container. It initialises an empty
data directory (initdb with data checksums, scram-sha-256, the superuser password
read from --superuser-password-file), writes the configuration it owns, starts
postgres as its child, reaps orphans, serves probes on --status-addr and metrics on
--metrics-addr, and on SIGTERM shuts postgres down within --stop-delay.

Without --pod-name it runs standalone: one primary, no Kubernetes. With --pod-name,
--namespace and --cluster it runs in Kubernetes mode: it follows the desired role in
its Pod's annotation pgwarden.io/role, holds the primary Lease <cluster>-primary while
primary, and clones, follows, promotes, demotes and rewinds by itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(envErrs) > 0 {
				return errors.New(strings.Join(envErrs, "; "))
			}
			code := instance.Main(o)
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "pgdata", env("PGDATA", ""), "PostgreSQL data directory [PGDATA]")
	f.StringVar(&o.BinDir, "pg-bin-dir", env("PG_BIN_DIR", ""), "directory of the PostgreSQL binaries [PG_BIN_DIR] (default: postgres on PATH, else the newest /usr/lib/postgresql/*/bin)")
	f.IntVar(&o.Port, "port", envInt("PGPORT", 5432, &envErrs), "PostgreSQL port [PGPORT]")
	f.StringVar(&o.SocketDir, "socket-dir", env("PGWARDEN_SOCKET_DIR", "/var/run/postgresql"), "directory of PostgreSQL's unix socket [PGWARDEN_SOCKET_DIR]")
	f.StringVar(&o.ListenAddresses, "listen-addresses", env("PGWARDEN_LISTEN_ADDRESSES", "*"), "PostgreSQL listen_addresses [PGWARDEN_LISTEN_ADDRESSES]")
	f.StringVar(&o.StatusAddr, "status-addr", env("PGWARDEN_STATUS_ADDR", ":8000"), "address of the probe and status endpoints [PGWARDEN_STATUS_ADDR]")
	f.StringVar(&o.MetricsAddr, "metrics-addr", env("PGWARDEN_METRICS_ADDR", ":9187"), "address of the Prometheus metrics endpoint [PGWARDEN_METRICS_ADDR]")
	f.DurationVar(&o.StopDelay, "stop-delay", 30*time.Second, "time budget of a shutdown: smart for half, then fast, immediate, SIGKILL (set it to the pod's termination grace period)")
	f.DurationVar(&o.StartDelay, "start-delay", 30*time.Second, "time the postmaster has to answer at all (accepting or rejecting connections) after it starts")
	f.DurationVar(&o.SwitchoverDelay, "switchover-delay", 40000000*time.Second, "time budget of a demotion's fast shutdown (Kubernetes mode); past it, immediate shutdown")
	f.StringVar(&o.PasswordFile, "superuser-password-file", env("PGWARDEN_SUPERUSER_PASSWORD_FILE", ""), "file holding the superuser's password, e.g. a mounted Secret [PGWARDEN_SUPERUSER_PASSWORD_FILE]")
	f.StringVar(&o.ParametersFile, "parameters-file", env("PGWARDEN_PARAMETERS_FILE", ""), "optional file of PostgreSQL parameters in postgresql.conf syntax; re-read when it changes [PGWARDEN_PARAMETERS_FILE]")
	f.StringVar(&o.SyncNamesFile, "synchronous-standby-names-file", env("PGWARDEN_SYNCHRONOUS_STANDBY_NAMES_FILE", ""), "optional file holding synchronous_standby_names, written by the operator from replication.synchronous; re-read when it changes [PGWARDEN_SYNCHRONOUS_STANDBY_NAMES_FILE]")
	f.StringVar(&o.RunAs, "run-as", env("PGWARDEN_RUN_AS", "postgres"), "OS user that runs postgres when pgwarden runs as root [PGWARDEN_RUN_AS]")
	f.StringVar(&o.PodName, "pod-name", env("POD_NAME", ""), "this instance's Pod [POD_NAME]; empty: standalone")
	f.StringVar(&o.Namespace, "namespace", env("POD_NAMESPACE", ""), "the Pod's namespace [POD_NAMESPACE]")
	f.StringVar(&o.Cluster, "cluster", env("CLUSTER_NAME", ""), "the PostgresCluster this instance belongs to [CLUSTER_NAME]")
	f.StringVar(&o.Kubeconfig, "kubeconfig", env("KUBECONFIG", ""), "kubeconfig file for the Kubernetes API [KUBECONFIG] (default: the in-cluster ServiceAccount)")
	f.StringVar(&o.ReplicationPasswordFile, "replication-password-file", env("PGWARDEN_REPLICATION_PASSWORD_FILE", ""), "file holding the replication role's password, e.g. a mounted Secret; required with --pod-name [PGWARDEN_REPLICATION_PASSWORD_FILE]")
	f.StringVar(&o.PodIP, "pod-ip", env("POD_IP", ""), "this Pod's IP, used until the Pod's status has one [POD_IP]")
	f.DurationVar(&o.LeaseDuration, "lease-duration", 15*time.Second, "primary Lease: how long others wait after the holder's last renew before taking it")
	f.DurationVar(&o.LeaseRenewDeadline, "lease-renew-deadline", 10*time.Second, "primary Lease: the holder fences itself (immediate shutdown) when it has not renewed for this long")
	f.DurationVar(&o.LeaseRetryPeriod, "lease-retry-period", 2*time.Second, "primary Lease: how often the holder renews and replicas look for a new holder")
	f.StringVar(&o.LogLevel, "log-level", env("PGWARDEN_LOG_LEVEL", "info"), "debug, info, warn or error [PGWARDEN_LOG_LEVEL]")
	f.SortFlags = false
	return cmd
}

func newInstanceStatus() *cobra.Command {
	addr := env("PGWARDEN_STATUS_ADDR", ":8000")
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the instance's /status as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host := addr
			if strings.HasPrefix(host, ":") {
				host = "127.0.0.1" + host
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/status", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("cannot read status from %s: %w", host, err)
			}
			defer resp.Body.Close()
			if _, err := io.Copy(cmd.OutOrStdout(), resp.Body); err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "status-addr", addr, "address of the instance's status endpoint [PGWARDEN_STATUS_ADDR]")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	return cmd
}
