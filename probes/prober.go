package probes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// DefaultInterval between two checks. Kubelet asks every 10 s by default
	// (DESIGN.md "Defaults"); checking every second keeps the cached answer at
	// most about a second old without loading the server (one round trip on an
	// open connection plus one short-lived ping connection).
	DefaultInterval = time.Second
	// DefaultTimeout bounds one check, ping and query together. A server that
	// cannot answer a trivial query on an open connection within a second is not
	// ready; it is also kubelet's default probe timeout.
	DefaultTimeout = time.Second
	// staleIntervals: the cached state is trusted for this many intervals plus one
	// timeout. Below that, one slow check would fail probes; much above it, a
	// stuck loop would serve an old OK for a long time.
	staleIntervals = 3
	// closeTimeout bounds closing the query connection when the prober stops.
	closeTimeout = 100 * time.Millisecond
	// applicationName marks the prober's session in pg_stat_activity.
	applicationName = "pgwarden-probe"
)

// Config is what a Prober needs. Network, Address and ConnConfig are required.
type Config struct {
	// Network and Address locate the postmaster for the native ping: "unix" and
	// the socket file (see SocketPath), or "tcp" and host:port.
	Network, Address string
	// ConnConfig returns the configuration of the superuser connection the
	// readiness query runs on. It is called for each new connection (the
	// connection is kept open between checks), so a rotated password is picked up
	// at the next reconnection. The password is never logged nor put in an error.
	ConnConfig func(ctx context.Context) (*pgx.ConnConfig, error)
	// Interval between checks; DefaultInterval if zero.
	Interval time.Duration
	// Timeout bounds each check; DefaultTimeout if zero.
	Timeout time.Duration
	// StaleAfter: handlers fail when the last check finished longer ago than
	// this. Zero means 3 intervals plus one timeout.
	StaleAfter time.Duration
	// Logger receives state changes (not every check); nothing is logged if nil.
	Logger *slog.Logger
}

// Snapshot is the cached state of the server, as of the last check.
type Snapshot struct {
	// CheckedAt is when the last check finished; zero before the first one.
	CheckedAt time.Time
	// Stale: the last check is older than the staleness bound, nothing below can
	// be trusted to describe the server now.
	Stale bool
	// Verdict of the native ping in the last check.
	Verdict Verdict
	// Started: the postmaster answered (Accepting or Rejecting) at least once
	// since the Prober was created or ResetStartup was last called.
	Started bool
	// Ready: the status query succeeded in the last check, the readiness gate (if
	// any) passes, and the state is not stale.
	Ready bool
	// NotReady says why Ready is false; nil when Ready.
	NotReady error

	// The fields below come from the last status query that succeeded, taken at
	// MeasuredAt (zero if none ever did). They are kept when later queries fail:
	// look at MeasuredAt before trusting them.
	MeasuredAt time.Time
	// InRecovery: pg_is_in_recovery(), a replica.
	InRecovery bool
	// Timeline the server writes (primary) or receives/replays (replica).
	Timeline uint32
	// CurrentLSN is pg_current_wal_lsn() on a primary; zero on a replica.
	CurrentLSN LSN
	// ReceivedLSN and ReplayLSN are pg_last_wal_receive_lsn() and
	// pg_last_wal_replay_lsn() on a replica; zero on a primary (and
	// ReceivedLSN is zero on a replica that never streamed).
	ReceivedLSN, ReplayLSN LSN
	// PendingRestart: some setting in pg_settings waits for a restart.
	PendingRestart bool
	// LatestEndLSN is, on a replica, the last WAL position its upstream reported to the WAL
	// receiver (pg_stat_wal_receiver.latest_end_lsn): the primary's end of WAL as last heard.
	// Zero on a primary and on a replica without a WAL receiver.
	LatestEndLSN LSN
	// ReplayLagSeconds is, on a replica, how far replay is behind in time: 0 when everything
	// received has been replayed, else now() minus pg_last_xact_replay_timestamp() (the commit
	// time of the last replayed transaction, on the primary's clock), at least 0. Nil on a
	// primary, on a replica that never received WAL by streaming, and while no transaction
	// was replayed since the server started.
	ReplayLagSeconds *float64
	// Connections counts client backends in pg_stat_activity (the prober's own session
	// included; WAL senders and background workers not); MaxConnections is max_connections.
	Connections, MaxConnections int
	// StreamingStandbys counts, on a primary, the standbys in pg_stat_replication with
	// state streaming; 0 on a replica.
	StreamingStandbys int
}

// Prober checks PostgreSQL in the background and serves probes from the result.
// Its methods are safe for concurrent use.
type Prober struct {
	network, address string
	connConfig       func(context.Context) (*pgx.ConnConfig, error)
	interval         time.Duration
	timeout          time.Duration
	staleAfter       time.Duration
	log              *slog.Logger
	now              func() time.Time // replaced in tests

	running   atomic.Bool
	gate      atomic.Pointer[func() error]
	exempt    atomic.Pointer[func() string]
	suspended atomic.Bool
	// kick asks the running loop for a check now; each request carries a
	// channel closed once that check is stored.
	kick chan chan struct{}
	// conn and its password (to scrub errors) are used only by the goroutine
	// running Start.
	conn         *pgx.Conn
	connPassword string

	mu       sync.Mutex
	st       state
	startGen uint64 // bumped by ResetStartup

	probeTotal    *prometheus.CounterVec
	checkDuration *prometheus.HistogramVec
}

// state is what checks write and handlers read, under Prober.mu.
type state struct {
	checkedAt time.Time
	verdict   Verdict
	started   bool
	queryErr  error // nil: the last status query succeeded
	server    serverStatus
}

type serverStatus struct {
	measuredAt                         time.Time
	inRecovery                         bool
	timeline                           uint32
	currentLSN, receivedLSN, replayLSN LSN
	pendingRestart                     bool
	latestEndLSN                       LSN
	replayLag                          *float64
	connections, maxConnections        int
	streamingStandbys                  int
}

// New returns a Prober; it checks nothing until Start.
func New(cfg Config) *Prober {
	p := &Prober{
		network:    cfg.Network,
		address:    cfg.Address,
		connConfig: cfg.ConnConfig,
		interval:   cfg.Interval,
		timeout:    cfg.Timeout,
		staleAfter: cfg.StaleAfter,
		log:        cfg.Logger,
		now:        time.Now,
		kick:       make(chan chan struct{}),
	}
	if p.interval <= 0 {
		p.interval = DefaultInterval
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	if p.staleAfter <= 0 {
		p.staleAfter = staleIntervals*p.interval + p.timeout
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.probeTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgwarden_probe_total",
		Help: "Kubernetes probes answered, by probe (startup, liveness, readiness) and result (success, failure).",
	}, []string{"probe", "result"})
	for _, pr := range []probe{probeStartup, probeLiveness, probeReadiness} {
		for _, r := range []string{"success", "failure"} {
			p.probeTotal.WithLabelValues(pr.String(), r)
		}
	}
	p.checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "pgwarden_probe_check_duration_seconds",
		Help: "Duration of the background checks of PostgreSQL: native ping and status query.",
		// 0.5 ms .. 2 s: a local ping takes about a millisecond, the timeout is 1 s.
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 13),
	}, []string{"check"})
	return p
}

// Collectors returns the Prober's metrics, for the caller to register.
func (p *Prober) Collectors() []prometheus.Collector {
	return []prometheus.Collector{p.probeTotal, p.checkDuration}
}

// SetReadinessGate sets an extra condition for readiness, evaluated each time
// readiness is asked (so it takes effect at once): a non-nil error makes the
// instance not ready. It must return quickly and never block, for example by
// reading a flag ("a primary is ready only while it holds the lease"). nil
// removes the gate.
func (p *Prober) SetReadinessGate(gate func() error) {
	if gate == nil {
		p.gate.Store(nil)
		return
	}
	p.gate.Store(&gate)
}

// SetLivenessExemption sets a function that says why postgres is stopped on purpose (a
// non-empty reason) or "" otherwise. While it gives a reason, liveness and startup pass although
// the postmaster does not answer: an instance fenced on request keeps postgres stopped and must
// not be restarted by the kubelet for it, nor be killed at startup when its container restarts
// while fenced. It must return quickly and never block. nil removes it.
func (p *Prober) SetLivenessExemption(exempt func() string) {
	if exempt == nil {
		p.exempt.Store(nil)
		return
	}
	p.exempt.Store(&exempt)
}

// livenessExempt returns the exemption's reason, or "".
func (p *Prober) livenessExempt() string {
	if e := p.exempt.Load(); e != nil {
		return (*e)()
	}
	return ""
}

// ResetStartup forgets that the postmaster answered: call it when the
// postmaster is (re)started, so the startup probe passes again only once the
// new postmaster answers. A check that began before the reset cannot pass it.
func (p *Prober) ResetStartup() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startGen++
	p.st.started = false
}

// Start checks PostgreSQL every interval until ctx ends, then closes its
// connection and returns nil. It returns an error at once if it is already
// running.
func (p *Prober) Start(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("cannot start prober: already running")
	}
	defer p.running.Store(false)
	defer p.closeConn(context.Background())

	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	var waiting []chan struct{}
	for {
		p.check(ctx)
		for _, w := range waiting {
			close(w)
		}
		waiting = waiting[:0]
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case w := <-p.kick:
			waiting = append(waiting, w)
		}
	}
}

// CheckNow asks the running prober for a check at once and waits, bounded by
// ctx, until its result is stored: the owner calls it when it knows the state
// changed (the postmaster answers, a stop begins), so probes need not wait for
// the next interval.
func (p *Prober) CheckNow(ctx context.Context) {
	done := make(chan struct{})
	select {
	case p.kick <- done:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Suspend makes the prober close its session and stop querying until Resume:
// readiness fails with "postgres is stopping" and liveness still pings. The
// owner calls it before it stops postgres, so that the prober's own session
// never holds up a smart shutdown. It returns once the session is closed
// (bounded by ctx).
func (p *Prober) Suspend(ctx context.Context) {
	p.suspended.Store(true)
	p.CheckNow(ctx)
}

// Resume undoes Suspend.
func (p *Prober) Resume() { p.suspended.Store(false) }

// check runs one ping and, when the server accepts connections, one status
// query, both within p.timeout, and stores the result.
func (p *Prober) check(ctx context.Context) {
	p.mu.Lock()
	gen := p.startGen
	p.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	t0 := time.Now()
	verdict := Ping(cctx, p.network, p.address)
	p.checkDuration.WithLabelValues("ping").Observe(time.Since(t0).Seconds())

	var (
		status   serverStatus
		queryErr error
	)
	if p.suspended.Load() {
		p.closeConn(cctx)
		queryErr = errors.New("postgres is stopping")
	} else if verdict == Accepting {
		t1 := time.Now()
		status, queryErr = p.queryStatus(cctx)
		p.checkDuration.WithLabelValues("query").Observe(time.Since(t1).Seconds())
	} else {
		// Do not hold a session open on a server that refuses new ones: during a
		// smart shutdown it would keep the server from stopping.
		p.closeConn(cctx)
		queryErr = fmt.Errorf("postgres is not accepting connections: %s", verdict)
	}
	if ctx.Err() != nil {
		return // stopping: what this check saw is an artefact of being cancelled
	}
	p.store(gen, verdict, status, queryErr)
}

func (p *Prober) store(gen uint64, verdict Verdict, status serverStatus, queryErr error) {
	p.mu.Lock()
	prev := p.st
	p.st.checkedAt = p.now()
	p.st.verdict = verdict
	if verdict.Answered() && gen == p.startGen {
		p.st.started = true
	}
	p.st.queryErr = queryErr
	if queryErr == nil {
		status.measuredAt = p.st.checkedAt
		p.st.server = status
	}
	cur := p.st
	p.mu.Unlock()

	if prev.checkedAt.IsZero() || prev.verdict != cur.verdict {
		p.log.Info("postgres ping", "verdict", cur.verdict.String())
	}
	if prev.started != cur.started && cur.started {
		p.log.Info("postgres answered: startup probe passes")
	}
	switch {
	case cur.queryErr == nil && (prev.queryErr != nil || prev.checkedAt.IsZero()):
		p.log.Info("postgres status query succeeds", "in_recovery", cur.server.inRecovery, "timeline", cur.server.timeline)
	case cur.queryErr != nil && (prev.queryErr == nil || prev.queryErr.Error() != cur.queryErr.Error()):
		p.log.Warn("postgres status query fails", "error", cur.queryErr.Error())
	}
}

// statusQuery collects readiness and /status in one round trip. The recovery
// flag is read once (OFFSET 0 keeps the planner from inlining it) so that a
// promotion during the query cannot make it call a primary-only function in
// recovery or mix the two roles. The replay lag in seconds is 0 when replay has caught up with
// what was received, else the age of the last replayed commit (see Snapshot.ReplayLagSeconds);
// the connection count reads pg_stat_activity, at most max_connections rows, once per check.
// A replica's timeline is the one its WAL
// receiver last received on, else the one of its last restartpoint.
const statusQuery = `SELECT s.r,
  CASE WHEN s.r THEN COALESCE(
      (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver WHERE received_tli > 0),
      (pg_catalog.pg_control_checkpoint()).timeline_id)
    ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
  END,
  CASE WHEN s.r THEN NULL ELSE pg_catalog.pg_current_wal_lsn()::text END,
  CASE WHEN s.r THEN pg_catalog.pg_last_wal_receive_lsn()::text END,
  CASE WHEN s.r THEN pg_catalog.pg_last_wal_replay_lsn()::text END,
  EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart),
  CASE WHEN s.r THEN (SELECT latest_end_lsn::text FROM pg_catalog.pg_stat_wal_receiver) END,
  CASE WHEN s.r THEN CASE
      WHEN pg_catalog.pg_last_wal_receive_lsn() IS NULL THEN NULL
      WHEN pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn() THEN 0
      WHEN pg_catalog.pg_last_xact_replay_timestamp() IS NULL THEN NULL
      ELSE GREATEST(0, extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()))::float8
    END END,
  (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'),
  pg_catalog.current_setting('max_connections')::int,
  CASE WHEN s.r THEN 0 ELSE (SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming') END
FROM (SELECT pg_catalog.pg_is_in_recovery() AS r OFFSET 0) s`

// queryStatus runs statusQuery on the kept connection, connecting first if
// needed. Any error drops the connection; the next check reconnects.
func (p *Prober) queryStatus(ctx context.Context) (serverStatus, error) {
	var st serverStatus
	if p.conn == nil {
		conn, pw, err := p.connect(ctx)
		if err != nil {
			return st, redact(fmt.Errorf("cannot connect for the status query: %w", err), pw)
		}
		p.conn, p.connPassword = conn, pw
	}
	password := p.connPassword
	var (
		timeline                                int64
		current, received, replayLSN, latestEnd *string
		connections, streaming                  int64
		maxConnections                          int32
	)
	err := p.conn.QueryRow(ctx, statusQuery).Scan(&st.inRecovery, &timeline, &current, &received, &replayLSN, &st.pendingRestart,
		&latestEnd, &st.replayLag, &connections, &maxConnections, &streaming)
	if err != nil {
		p.closeConn(ctx)
		return st, redact(fmt.Errorf("cannot run the status query: %w", err), password)
	}
	st.timeline = uint32(timeline)
	st.connections, st.maxConnections, st.streamingStandbys = int(connections), int(maxConnections), int(streaming)
	for _, f := range []struct {
		dst *LSN
		src *string
	}{{&st.currentLSN, current}, {&st.receivedLSN, received}, {&st.replayLSN, replayLSN}, {&st.latestEndLSN, latestEnd}} {
		if f.src == nil {
			continue
		}
		if *f.dst, err = ParseLSN(*f.src); err != nil {
			return st, fmt.Errorf("cannot read the status query: %w", err)
		}
	}
	return st, nil
}

// connect opens the status connection. It returns the password so that errors
// can be scrubbed of it.
func (p *Prober) connect(ctx context.Context) (*pgx.Conn, string, error) {
	if p.connConfig == nil {
		return nil, "", errors.New("no connection configuration")
	}
	cfg, err := p.connConfig(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("cannot get connection configuration: %w", err)
	}
	if cfg == nil {
		return nil, "", errors.New("no connection configuration")
	}
	cfg = cfg.Copy()
	// On a cancelled context, set a deadline on the socket at once rather than
	// send a cancel request first: a hung server must not stretch a check.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = applicationName
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, cfg.Password, err
}

func (p *Prober) closeConn(ctx context.Context) {
	if p.conn == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()
	_ = p.conn.Close(cctx)
	p.conn, p.connPassword = nil, ""
}

// Snapshot returns the cached state. It never touches PostgreSQL.
func (p *Prober) Snapshot() Snapshot {
	p.mu.Lock()
	st := p.st
	p.mu.Unlock()
	s := Snapshot{
		CheckedAt:      st.checkedAt,
		Verdict:        st.verdict,
		Started:        st.started,
		MeasuredAt:     st.server.measuredAt,
		InRecovery:     st.server.inRecovery,
		Timeline:       st.server.timeline,
		CurrentLSN:     st.server.currentLSN,
		ReceivedLSN:    st.server.receivedLSN,
		ReplayLSN:      st.server.replayLSN,
		PendingRestart: st.server.pendingRestart,
		LatestEndLSN:   st.server.latestEndLSN,
		Connections:    st.server.connections,
		MaxConnections: st.server.maxConnections,

		StreamingStandbys: st.server.streamingStandbys,
	}
	if st.server.replayLag != nil {
		lag := *st.server.replayLag
		s.ReplayLagSeconds = &lag
	}
	s.Stale = p.staleErr(st) != nil
	s.NotReady = p.readyErr(st)
	s.Ready = s.NotReady == nil
	return s
}

// staleErr says why st cannot be served, or nil.
func (p *Prober) staleErr(st state) error {
	if st.checkedAt.IsZero() {
		return errors.New("no check of postgres has finished yet")
	}
	if age := p.now().Sub(st.checkedAt); age > p.staleAfter {
		return fmt.Errorf("last check of postgres is stale: finished %s ago (bound %s)", age.Round(time.Millisecond), p.staleAfter)
	}
	return nil
}

func (p *Prober) readyErr(st state) error {
	if err := p.staleErr(st); err != nil {
		return err
	}
	// The gate speaks first: it knows why postgres is down on purpose (fenced,
	// stopping), which says more than the failed query it causes.
	if g := p.gate.Load(); g != nil {
		if err := (*g)(); err != nil {
			return fmt.Errorf("readiness gate: %w", err)
		}
	}
	if st.queryErr != nil {
		return st.queryErr
	}
	return nil
}

// redactedError carries a message from which a secret was removed. It does
// not wrap the original error, which still holds the secret.
type redactedError struct{ msg string }

func (e *redactedError) Error() string { return e.msg }

// redact returns err with every occurrence of secret replaced.
func redact(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), secret, "[REDACTED]")}
}
