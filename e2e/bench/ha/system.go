package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// System is one HA system under test. A System only knows how to bring up a
// three-member cluster of itself; everything the benchmark measures goes
// through the Cluster it returns, so the scenarios are the same code for every
// system.
//
// To add a system, write one file with a type implementing System and
// Cluster, and register it in an init function:
//
//	func init() { register("pgwarden", func(o Options) System { return &pgwardenSystem{o} }) }
type System interface {
	// Name is the column heading in the table ("Patroni", "pgwarden").
	Name() string
	// Start installs what is missing, starts a cluster of three members and
	// returns once it has a primary and two streaming replicas, or ctx ends.
	// On error, Start has already stopped whatever it started.
	Start(ctx context.Context) (Cluster, error)
}

// Cluster is a running cluster of a System. Members are named by the system
// (Patroni: "m1".."m3"; pgwarden: pod names). Every method must return within
// a few seconds or when ctx ends; the harness polls Primary and Streaming
// every 100 ms while it waits for an event.
type Cluster interface {
	// Members lists the members in a stable order.
	Members() []string
	// ProbeDSN is the connection string the write probe opens a fresh
	// connection with for every write: it must lead to the primary, whichever
	// member that is (Patroni: every member in one multi-host string with
	// target_session_attrs=read-write; pgwarden: the -rw Service). It must
	// carry a connect_timeout.
	ProbeDSN() string
	// ServerAddr is how a member appears to a client connected to it:
	// host(inet_server_addr()) || ':' || inet_server_port(). The probe uses it
	// to tell which member acknowledged each write.
	ServerAddr(member string) string
	// Primary is the member the system itself considers the primary now (the
	// Patroni leader in the DCS; the Lease holder for pgwarden). It returns
	// ErrNoPrimary when there is none.
	Primary(ctx context.Context) (string, error)
	// Streaming reports whether member is in pg_stat_replication of the
	// current primary with state 'streaming'.
	Streaming(ctx context.Context, member string) (bool, error)
	// Switchover asks the system for a planned switchover from the current
	// primary to candidate, the way its users would (Patroni: POST
	// /switchover; pgwarden: kubectl annotate pod <candidate>
	// pgwarden.io/role=primary --overwrite). It may return before the
	// switchover is complete; the harness times the outcome, not the call.
	Switchover(ctx context.Context, primary, candidate string) error
	// Kill sends SIGKILL to the member's manager and to its postmaster, as a
	// container kill would, and returns once both are gone. The system must
	// not restart the member by itself until Restart is called (pgwarden:
	// use a test-bed hook that keeps the container down, or say in the README
	// that the kubelet restarts it at once and time from the kill instead).
	Kill(ctx context.Context, member string) error
	// Restart starts a killed member's manager again, with its data directory.
	Restart(ctx context.Context, member string) error
	// ManagerPIDs are the host PIDs of the member's manager: the processes
	// whose memory and CPU count as the HA system's cost (Patroni: the
	// patroni process; pgwarden: the instance manager in the pod). Not the
	// postmaster or its children.
	ManagerPIDs(ctx context.Context, member string) ([]int, error)
	// Stop stops everything Start started and removes its temporary files.
	Stop(ctx context.Context) error
}

// selfRestarter is implemented by a Cluster whose platform restarts a killed
// member by itself (pgwarden: the kubelet restarts the container). Its Restart
// only waits for that restart, and "killed member restarted → streaming
// again" is timed from the kill instead of from Restart.
type selfRestarter interface{ RestartsByItself() bool }

func restartsByItself(cl Cluster) bool {
	s, ok := cl.(selfRestarter)
	return ok && s.RestartsByItself()
}

// systemHealth is implemented by a Cluster whose system has its own notion of
// healthy that can lag behind "a primary and streaming replicas" (pgwarden:
// the PostgresCluster's phase is Healthy only once every pod is Ready, and a
// switchover requested before that is refused). The harness waits for it too
// before each scenario, so that no action lands while the system would
// rightly refuse it.
type systemHealth interface {
	SystemHealthy(ctx context.Context) error
}

// ErrNoPrimary is returned by Cluster.Primary while the cluster has no primary.
var ErrNoPrimary = errors.New("no primary")

// ErrNotPlugged is returned by System.Start for a system whose side of the
// benchmark is not written yet; its column shows "n/a".
var ErrNotPlugged = errors.New("not plugged in yet")

// Options are what every system gets from the command line.
type Options struct {
	PGBinDir string // PostgreSQL 15 binaries
	WorkDir  string // parent of the temporary directories
	LogDir   string // where Stop leaves the system's logs ("" = nowhere)
	Log      func(format string, args ...any)
	// PgwardenProbe is how pgwarden's write probe reaches the primary:
	// "service" (the -rw Service, what the README's table uses) or "hosts"
	// (every pod IP with target_session_attrs=read-write, the mechanism of
	// Patroni's probe: it leaves kube-proxy out of the figures).
	PgwardenProbe string
}

var systems = map[string]func(Options) System{}

func register(key string, f func(Options) System) {
	if _, dup := systems[key]; dup {
		panic("system registered twice: " + key)
	}
	systems[key] = f
}

func newSystem(key string, o Options) (System, error) {
	f, ok := systems[key]
	if !ok {
		keys := make([]string, 0, len(systems))
		for k := range systems {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return nil, fmt.Errorf("unknown system %q (known: %v)", key, keys)
	}
	return f(o), nil
}
