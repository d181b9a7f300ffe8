package checker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// Config says what to check and how hard.
type Config struct {
	Clientset kubernetes.Interface
	Namespace string
	Cluster   string
	// RWHost is where the -rw Service is reached (its ClusterIP from the node).
	RWHost   string
	Password string
	// Clients writing through the Service (default 4), each pausing Pause between writes
	// (default 50 ms).
	Clients int
	Pause   time.Duration
	// ProbeEvery is the interval of the direct writes to each instance (default 100 ms).
	ProbeEvery time.Duration
	// ConnectTimeout bounds each connection (default 1 s), WriteTimeout each INSERT (default 5 s).
	ConnectTimeout time.Duration
	WriteTimeout   time.Duration
	// PodSelector selects the cluster's pods (default pgwarden.io/cluster=<Cluster>).
	PodSelector string
	Logf        func(format string, args ...any)
}

// Table names; Prepare creates them.
const (
	WritesTable = "checker_writes"
	ProbesTable = "checker_probes"
)

// Checker runs the writers, the probes and the Lease watch until Stop.
type Checker struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	writes  []Write
	lease   []LeaseObs
	names   map[string]string // pod IP -> pod name, every IP ever seen
	targets map[string]string // pod name -> current IP
	probing map[string]bool
	run     string // prefix making keys unique across runs on one cluster
	probeOK int
}

// Record is what a run observed.
type Record struct {
	Writes []Write
	Lease  []LeaseObs
}

func (c *Config) defaults() {
	if c.Clients == 0 {
		c.Clients = 4
	}
	if c.Pause == 0 {
		c.Pause = 50 * time.Millisecond
	}
	if c.ProbeEvery == 0 {
		c.ProbeEvery = 100 * time.Millisecond
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 5 * time.Second
	}
	if c.PodSelector == "" {
		c.PodSelector = "pgwarden.io/cluster=" + c.Cluster
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Prepare creates the checker's tables through host (retrying until ctx ends).
func Prepare(ctx context.Context, cfg Config, host string) error {
	cfg.defaults()
	var last error
	for ctx.Err() == nil {
		last = func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			conn, err := connect(cctx, cfg, host)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			_, err = conn.Exec(cctx, `CREATE TABLE IF NOT EXISTS `+WritesTable+` (key text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS `+ProbesTable+` (key text PRIMARY KEY)`)
			return err
		}()
		if last == nil {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("cannot create the checker's tables through %s: %v", host, last)
}

// Start starts writing and watching; run names this run in the keys (unique per cluster).
func Start(cfg Config, run string) (*Checker, error) {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	c := &Checker{cfg: cfg, cancel: cancel, names: map[string]string{}, targets: map[string]string{},
		probing: map[string]bool{}, run: run}
	if err := c.refreshPods(ctx); err != nil {
		cancel()
		return nil, err
	}
	ready := make(chan error, 1)
	c.wg.Add(2)
	go func() { defer c.wg.Done(); c.watchLease(ctx, ready) }()
	go func() { defer c.wg.Done(); c.watchPods(ctx) }()
	if err := <-ready; err != nil {
		cancel()
		c.wg.Wait()
		return nil, err
	}
	for i := range cfg.Clients {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.writer(ctx, i) }()
	}
	return c, nil
}

// Stop stops everything and returns the record.
func (c *Checker) Stop() Record {
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return Record{Writes: append([]Write(nil), c.writes...), Lease: append([]LeaseObs(nil), c.lease...)}
}

// Acked is the number of writes acknowledged through the Service so far.
func (c *Checker) Acked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, w := range c.writes {
		if !w.Direct && w.OK() {
			n++
		}
	}
	return n
}

// AckedSince says whether a write sent at or after t was acknowledged through the Service, and
// by which instance (the last such).
func (c *Checker) AckedSince(t time.Time) (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.writes) - 1; i >= 0; i-- {
		w := c.writes[i]
		if !w.Direct && w.OK() && !w.Sent.Before(t) {
			return true, w.Server
		}
	}
	return false, ""
}

func (c *Checker) record(w Write) {
	c.mu.Lock()
	if w.Server == "" && w.ServerIP != "" {
		w.Server = c.names[w.ServerIP]
	}
	c.writes = append(c.writes, w)
	c.mu.Unlock()
}

func connect(ctx context.Context, cfg Config, host string) (*pgx.Conn, error) {
	return connectWith(ctx, cfg, host, nil)
}

// quietParams keep the probes' refused writes on replicas (ten a second each) out of the
// server's log; the connection is a superuser's, which may set them at startup.
var quietParams = map[string]string{"log_min_messages": "fatal", "log_min_error_statement": "panic"}

func connectWith(ctx context.Context, cfg Config, host string, params map[string]string) (*pgx.Conn, error) {
	pc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable application_name=checker", host))
	if err != nil {
		return nil, err
	}
	for k, v := range params {
		pc.RuntimeParams[k] = v
	}
	pc.Password = cfg.Password
	pc.ConnectTimeout = cfg.ConnectTimeout
	return pgx.ConnectConfig(ctx, pc)
}

// insertSQL returns the server's address and its WAL insert timeline (the first 8 hex digits
// of the current WAL file name).
func insertSQL(table string) string {
	return `INSERT INTO ` + table + ` (key) VALUES ($1)
RETURNING host(inet_server_addr()), ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint`
}

// inDoubt says whether an INSERT that failed with err may nevertheless have committed: unless
// the server answered with an ordinary ERROR (the statement failed, nothing committed), the
// answer may have been lost after the commit (a broken connection, a timeout, a FATAL such as
// the termination of a backend that waited for a synchronous standby after committing locally).
func inDoubt(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Severity != "ERROR"
	}
	return true
}

func (c *Checker) writer(ctx context.Context, client int) {
	for seq := 0; ctx.Err() == nil; seq++ {
		key := fmt.Sprintf("%s-c%d-%07d", c.run, client, seq)
		w := Write{Key: key, Client: client}
		func() {
			cctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout+c.cfg.WriteTimeout)
			defer cancel()
			t0 := time.Now()
			conn, err := connect(cctx, c.cfg, c.cfg.RWHost)
			if err != nil {
				w.Sent, w.Acked, w.Err = t0, time.Now(), "connect: "+err.Error()
				return
			}
			defer conn.Close(context.Background())
			wctx, wcancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
			defer wcancel()
			var tl int64
			w.Sent = time.Now()
			err = conn.QueryRow(wctx, insertSQL(WritesTable), key).Scan(&w.ServerIP, &tl)
			w.Acked = time.Now()
			if err != nil {
				w.Err, w.InDoubt = err.Error(), inDoubt(err)
				return
			}
			w.Timeline = uint32(tl)
		}()
		if ctx.Err() != nil && !w.OK() {
			return // stopped: not a failure of the cluster
		}
		c.record(w)
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.Pause):
		}
	}
}

// prober writes to pod name directly, on one connection to its current IP, every ProbeEvery.
// Only acknowledged probes are recorded: they are what split brain is made of.
func (c *Checker) prober(ctx context.Context, name string) {
	var conn *pgx.Conn
	var connIP string
	closeConn := func() {
		if conn != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
	defer closeConn()
	t := time.NewTicker(c.cfg.ProbeEvery)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		ip := c.targets[name]
		c.mu.Unlock()
		if ip == "" {
			closeConn()
			continue
		}
		if conn != nil && (connIP != ip || conn.IsClosed()) {
			closeConn()
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
			var err error
			conn, err = connectWith(cctx, c.cfg, ip, quietParams)
			cancel()
			if err != nil {
				conn = nil
				continue
			}
			connIP = ip
		}
		key := fmt.Sprintf("%s-p-%s-%07d", c.run, name, seq)
		wctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
		var tl int64
		var addr string
		sent := time.Now()
		err := conn.QueryRow(wctx, insertSQL(ProbesTable), key).Scan(&addr, &tl)
		acked := time.Now()
		cancel()
		if err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				closeConn()
			}
			continue
		}
		c.record(Write{Key: key, Client: -1, Direct: true, Target: name, Sent: sent, Acked: acked,
			Server: name, ServerIP: ip, Timeline: uint32(tl)})
	}
}

func (c *Checker) refreshPods(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pods, err := c.cfg.Clientset.CoreV1().Pods(c.cfg.Namespace).List(lctx, metav1.ListOptions{LabelSelector: c.cfg.PodSelector})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	current := map[string]string{}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.Status.Phase != corev1.PodRunning {
			continue
		}
		c.names[p.Status.PodIP] = p.Name
		current[p.Name] = p.Status.PodIP
	}
	c.targets = current
	for name := range current {
		if !c.probing[name] {
			c.probing[name] = true
			c.wg.Add(1)
			go func() { defer c.wg.Done(); c.prober(ctx, name) }()
		}
	}
	return nil
}

func (c *Checker) watchPods(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.refreshPods(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logf("checker: listing pods: %v", err)
		}
	}
}

func (c *Checker) observe(l *coordinationv1.Lease, exists bool) {
	o := LeaseObs{Observed: time.Now(), Exists: exists}
	if exists && l != nil {
		if h := l.Spec.HolderIdentity; h != nil {
			o.Holder = *h
		}
		if a := l.Spec.AcquireTime; a != nil {
			o.Acquired = a.Time
		}
	}
	c.mu.Lock()
	c.lease = append(c.lease, o)
	c.mu.Unlock()
}

// watchLease records every state of the primary Lease: a list, then a watch from its
// resourceVersion, again after every break. ready gets the first list's outcome.
func (c *Checker) watchLease(ctx context.Context, ready chan<- error) {
	name := c.cfg.Cluster + "-primary"
	leases := c.cfg.Clientset.CoordinationV1().Leases(c.cfg.Namespace)
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	first := true
	for ctx.Err() == nil {
		l, err := leases.List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			if first {
				ready <- fmt.Errorf("checker: cannot read Lease %s: %w", name, err)
				return
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if len(l.Items) == 0 {
			c.observe(nil, false)
		} else {
			c.observe(&l.Items[0], true)
		}
		if first {
			ready <- nil
			first = false
		}
		w, err := leases.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			continue
		}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Added, watch.Modified:
				if lease, ok := ev.Object.(*coordinationv1.Lease); ok {
					c.observe(lease, true)
				}
			case watch.Deleted:
				c.observe(nil, false)
			}
		}
		w.Stop()
	}
}

// ReadBack returns every key of the writes table on host (the final primary).
func ReadBack(ctx context.Context, cfg Config, host string) (map[string]bool, error) {
	cfg.defaults()
	conn, err := connect(ctx, cfg, host)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT key FROM "+WritesTable)
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		keys[k] = true
	}
	return keys, rows.Err()
}

// RunID makes a key prefix from a scenario name and a counter.
func RunID(scenario string, n int) string { return scenario + "-" + strconv.Itoa(n) }
