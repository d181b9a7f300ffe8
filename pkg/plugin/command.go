package plugin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pgwarden/pgwarden/pkg/version"
)

// connFlags are kubectl's connection flags.
type connFlags struct {
	kubeconfig string
	context    string
	namespace  string
}

// envFactory builds the Env from the connection flags (tests replace it).
type envFactory func(connFlags) (*Env, error)

// Main runs the plugin with args (without the program name) and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr, newEnvFromKubeconfig)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, newEnv envFactory) int {
	cmd := newRootCommand(stdout, stderr, newEnv)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

func newRootCommand(stdout, stderr io.Writer, newEnv envFactory) *cobra.Command {
	var cf connFlags
	root := &cobra.Command{
		Use:   "kubectl-pgwarden",
		Short: "Inspect and operate pgwarden PostgreSQL clusters",
		Long: "kubectl pgwarden: the status of a pgwarden PostgresCluster, switchovers and fencing.\n" +
			"Installed as kubectl-pgwarden on the PATH, it runs as `kubectl pgwarden ...`.",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVar(&cf.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&cf.context, "context", "", "the kubeconfig context to use")
	pf.StringVarP(&cf.namespace, "namespace", "n", "", "the namespace of the cluster (default: the context's namespace)")

	root.AddCommand(newStatusCommand(stdout, &cf, newEnv), newPromoteCommand(stdout, &cf, newEnv), newFenceCommand(stdout, &cf, newEnv))
	return root
}

func newStatusCommand(stdout io.Writer, cf *connFlags, newEnv envFactory) *cobra.Command {
	var (
		output        string
		events        int
		statusTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status <cluster>",
		Short: "Show the instances of a cluster: roles, readiness, timeline, LSNs, lag, the primary Lease, recent Events",
		Long: "Show the instances of a cluster. Each instance's /status is read through the API server's pod proxy\n" +
			"(port 8000), all in parallel; an instance that does not answer in --status-timeout is shown as unknown.\n" +
			"LAG is the primary's current LSN minus the replica's replay LSN.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			env, err := newEnv(*cf)
			if err != nil {
				return err
			}
			env.StatusTimeout = statusTimeout
			r, err := env.Collect(cmd.Context(), args[0], events)
			if err != nil {
				return err
			}
			return RenderReport(stdout, r, output, env.now())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", OutputTable, "output format: table, json or yaml")
	f.IntVar(&events, "events", 5, "how many of the latest Events of the cluster and its Pods to show (0: none)")
	f.DurationVar(&statusTimeout, "status-timeout", 2*time.Second, "how long to wait for the instances' /status")
	return cmd
}

func newPromoteCommand(stdout io.Writer, cf *connFlags, newEnv envFactory) *cobra.Command {
	var (
		output  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "promote <cluster> <pod>",
		Short: "Switch the primary over to a replica and follow the switchover to its end",
		Long: "Write the annotation pgwarden.io/role=primary on the Pod (as `kubectl annotate` would), then follow the\n" +
			"switchover: the primary Lease, the new primary accepting writes (its /status: role primary, ready) and the\n" +
			"old primary streaming again (its /status: role replica with an upstream). Exits non-zero if the\n" +
			"operator refuses the request or the switchover does not end within --timeout.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			env, err := newEnv(*cf)
			if err != nil {
				return err
			}
			opts := PromoteOptions{Timeout: timeout}
			if output == OutputTable || output == "" {
				opts.Progress = stdout
			}
			res, err := env.Promote(cmd.Context(), args[0], args[1], opts)
			if output == OutputJSON || output == OutputYAML {
				if werr := writeStructured(stdout, output, res); werr != nil && err == nil {
					err = werr
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", OutputTable, "output format: table (progress lines), json or yaml (the result at the end)")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "how long to follow the switchover before giving up")
	return cmd
}

func newFenceCommand(stdout io.Writer, cf *connFlags, newEnv envFactory) *cobra.Command {
	var (
		output  string
		timeout time.Duration
		force   bool
	)
	cmd := &cobra.Command{
		Use:   "fence <cluster> <pod> on|off",
		Short: "Stop an instance and keep it stopped (on), or start it again as a replica (off)",
		Long: "on: write the annotation pgwarden.io/fenced=true on the Pod, then wait until the instance has stopped\n" +
			"PostgreSQL (its /status: phase fenced, fenced true, no postmaster). A replica stops at once (fast shutdown),\n" +
			"without any failover. A primary is switched over to the best ready replica first and stops once it is a\n" +
			"replica; if no replica can take over, the operator refuses (Event FenceRefused), the annotation is removed\n" +
			"again and the command fails: the primary keeps running.\n" +
			"With synchronous replication, on refuses when fewer ready replicas than spec.replication.synchronous.number\n" +
			"would be left (every commit would wait); --force fences anyway.\n" +
			"off: remove the annotation, then wait until the instance is a ready replica streaming from the primary.\n" +
			"Exits non-zero when the fence is refused or the instance does not get there within --timeout.",
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var on bool
			switch args[2] {
			case "on":
				on = true
			case "off":
			default:
				return fmt.Errorf("invalid argument %q: want on or off", args[2])
			}
			env, err := newEnv(*cf)
			if err != nil {
				return err
			}
			opts := FenceOptions{Timeout: timeout, Force: force}
			if output == OutputTable || output == "" {
				opts.Progress = stdout
			}
			res, err := env.Fence(cmd.Context(), args[0], args[1], on, opts)
			if output == OutputJSON || output == OutputYAML {
				if werr := writeStructured(stdout, output, res); werr != nil && err == nil {
					err = werr
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", OutputTable, "output format: table (progress lines), json or yaml (the result at the end)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the instance to stop (on) or stream again (off)")
	f.BoolVar(&force, "force", false, "fence even if too few synchronous standbys would be left")
	return cmd
}

// newEnvFromKubeconfig loads the client configuration like kubectl: --kubeconfig, else $KUBECONFIG,
// else ~/.kube/config, else in-cluster; --context and --namespace override the current context.
func newEnvFromKubeconfig(cf connFlags) (*Env, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = cf.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: cf.context}
	if cf.namespace != "" {
		overrides.Context.Namespace = cf.namespace
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("cannot determine the namespace: %w", err)
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("cannot load the client configuration: %w", err)
	}
	cfg.UserAgent = "kubectl-pgwarden/" + version.Version
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Env{Kube: kube, Dynamic: dyn, Fetcher: PodProxyFetcher{Client: kube}, Namespace: ns}, nil
}
