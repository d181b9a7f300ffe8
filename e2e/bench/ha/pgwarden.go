package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// pgwarden's side: the operator deployed from deploy/ (the node overlay
// e2e/node/deploy) and a 3-instance PostgresCluster in real pods on the node
// test bed (e2e/testbed), with the instance image built from the working tree
// (bin/pgwarden-instance, -tags noperator) — what e2e/node/node_test.go does.
//
// The node is obtained through e2e/testbed/with-node.sh, the one way the
// project shares it between checkouts: Start runs `with-node.sh bench-ha`
// with a command that only waits for its standard input to close. If the node
// is already up (a run under with-node.sh, make testbed-up), it is used and
// stays up; otherwise with-node.sh takes the host-wide queue
// (PGWARDEN_NODE_WAIT), brings the node up, and brings it down again — and
// checks the host is as before — when Stop closes that input (or when this
// process dies and the pipe closes with it).
func init() { register("pgwarden", func(o Options) System { return &pgwardenSystem{o: o} }) }

const (
	pwCluster           = "bench"
	pwInstances         = 3
	pwOperatorNamespace = "pgwarden-system"
	pwOperatorName      = "pgwarden-operator"
	pwContainer         = "postgres" // the instance container (pkg/operator: instanceContainerName)
	pwClusterLabel      = "pgwarden.io/cluster"
	pwReadyLimit        = 6 * time.Minute // node up + images + operator + initdb + two clones
)

type pgwardenSystem struct{ o Options }

func (s *pgwardenSystem) Name() string { return "pgwarden" }

type pgwardenCluster struct {
	o       Options
	root    string // the checkout
	tbDir   string // the node's state directory (.testbed)
	kubectl string
	kc      string // admin kubeconfig
	cs      kubernetes.Interface
	c       client.Client
	ns      string
	members []string

	// with-node.sh holding the node; nil once released.
	node     *exec.Cmd
	nodeIn   io.WriteCloser
	nodeDone chan struct{}
	nodeErr  error

	deployedOperator bool
	createdNS        bool

	password string // superuser password, from the cluster's Secret; never logged
	rwIP     string

	watch *watchLog // nil without a log directory

	mu     sync.Mutex
	podIPs map[string]string
	killed map[string]*killRecord
}

// killRecord follows one killed container until the kubelet has restarted it.
type killRecord struct {
	id        string    // the killed container
	at        time.Time // SIGKILL sent
	restarted chan struct{}
	after     time.Duration // kill → a new container's manager is running; valid once restarted is closed
}

func (s *pgwardenSystem) Start(ctx context.Context) (_ Cluster, err error) {
	root, err := testbed.ModuleRoot()
	if err != nil {
		return nil, err
	}
	tbDir, err := testbed.NodeDir()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	cl := &pgwardenCluster{
		o: s.o, root: root, tbDir: tbDir, kc: filepath.Join(tbDir, "kubeconfig"),
		ns:     "bench-ha-" + hex.EncodeToString(b),
		podIPs: map[string]string{}, killed: map[string]*killRecord{},
	}
	for i := 1; i <= pwInstances; i++ {
		cl.members = append(cl.members, fmt.Sprintf("%s-%d", pwCluster, i))
	}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if serr := cl.Stop(sctx); serr != nil {
				s.o.Log("pgwarden: cleaning up after a failed start: %v", serr)
			}
		}
	}()

	// The binaries first, without the node: a build error shows before the
	// node is taken from the queue, and images.sh's build below is cached.
	// (Nothing is written under .testbed yet: with-node.sh's host check
	// would count a directory that existed before the node as left over.)
	s.o.Log("pgwarden: building bin/pgwarden and bin/pgwarden-instance")
	if err := cl.run(ctx, 10*time.Minute, "make", "-s", "build", "build-instance"); err != nil {
		return nil, err
	}
	if err := cl.run(ctx, 10*time.Minute, "bash", "e2e/testbed/build.sh", "kubectl"); err != nil {
		return nil, err
	}
	out, err := cl.output(ctx, time.Minute, "bash", "e2e/testbed/build.sh", "--print-dir", "kubectl")
	if err != nil {
		return nil, err
	}
	cl.kubectl = filepath.Join(strings.TrimSpace(out), "kubectl")

	if err := cl.holdNode(ctx); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cl.kc)
	if err != nil {
		return nil, fmt.Errorf("cannot load the node's kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	if cl.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := pgv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if cl.c, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}

	s.o.Log("pgwarden: building the images and importing them into the node (e2e/testbed/images.sh pgwarden)")
	if err := cl.run(ctx, 10*time.Minute, "bash", "e2e/testbed/images.sh", "pgwarden"); err != nil {
		return nil, err
	}
	if err := cl.deployOperator(ctx); err != nil {
		return nil, err
	}
	if err := cl.createCluster(ctx); err != nil {
		return nil, err
	}
	if s.o.LogDir != "" {
		if err := os.MkdirAll(filepath.Join(s.o.LogDir, "pgwarden-logs"), 0o755); err == nil {
			cl.startWatchLog(filepath.Join(s.o.LogDir, "pgwarden-logs", "watch.log"))
		}
	}
	if err := waitHealthy(ctx, cl, pwReadyLimit); err != nil {
		return nil, err
	}
	if err := cl.checkBinary(ctx); err != nil {
		return nil, err
	}
	return cl, nil
}

// run runs a command from the checkout with the node's kubeconfig; its
// output goes to the error when it fails.
func (c *pgwardenCluster) run(ctx context.Context, limit time.Duration, name string, args ...string) error {
	_, err := c.output(ctx, limit, name, args...)
	return err
}

func (c *pgwardenCluster) output(ctx context.Context, limit time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kc)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, tailString(stdout.String(), 20), tailString(stderr.String(), 20))
	}
	return stdout.String(), nil
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// holdNode starts `with-node.sh bench-ha` with a command that signals the
// node is up and then waits for its standard input to close.
func (c *pgwardenCluster) holdNode(ctx context.Context) error {
	logPath := filepath.Join(c.o.WorkDir, "pgwarden-bench-node.log")
	if c.o.LogDir != "" {
		logPath = filepath.Join(c.o.LogDir, "pgwarden-node.log")
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	ready, err := os.CreateTemp(c.o.WorkDir, "pgwarden-bench-node-ready-*")
	if err != nil {
		return err
	}
	ready.Close()
	readyPath := ready.Name()
	_ = os.Remove(readyPath)
	defer os.Remove(readyPath)

	c.o.Log("pgwarden: waiting for the node test bed (e2e/testbed/with-node.sh; PGWARDEN_NODE_WAIT=%q)", os.Getenv("PGWARDEN_NODE_WAIT"))
	cmd := exec.Command("bash", "e2e/testbed/with-node.sh", "bench-ha",
		"bash", "-c", `touch "$0" && exec cat >/dev/null`, readyPath)
	cmd.Dir = c.root
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches the benchmark, which stops the
	// cluster first and then lets the node go.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start with-node.sh: %w", err)
	}
	c.node, c.nodeIn, c.nodeDone = cmd, in, make(chan struct{})
	go func() { c.nodeErr = cmd.Wait(); close(c.nodeDone) }()
	for {
		if _, err := os.Stat(readyPath); err == nil {
			c.o.Log("pgwarden: the node test bed is up")
			return nil
		}
		select {
		case <-c.nodeDone:
			b, _ := os.ReadFile(logPath)
			c.node = nil
			// One line: the table shows only the first line of the reason.
			return fmt.Errorf("with-node.sh ended before the node was up (%v): %s", c.nodeErr,
				strings.ReplaceAll(strings.TrimSpace(tailString(string(b), 3)), "\n", " / "))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// releaseNode lets with-node.sh finish: it brings the node down if it brought
// it up, and says PASS only if the host is as it was.
func (c *pgwardenCluster) releaseNode(ctx context.Context) error {
	if c.node == nil {
		return nil
	}
	_ = c.nodeIn.Close()
	select {
	case <-c.nodeDone:
	case <-ctx.Done():
		return fmt.Errorf("with-node.sh did not finish: %w", ctx.Err())
	}
	c.node = nil
	if c.nodeErr != nil {
		return fmt.Errorf("with-node.sh (bringing the node down, checking the host): %v; see pgwarden-node.log", c.nodeErr)
	}
	return nil
}

func (c *pgwardenCluster) deployOperator(ctx context.Context) error {
	// Like the node test: never take over (and later remove) an operator
	// somebody else deployed.
	if _, err := c.cs.CoreV1().Namespaces().Get(ctx, pwOperatorNamespace, metav1.GetOptions{}); err == nil {
		return fmt.Errorf("namespace %s exists: an operator is already deployed on the node; remove it first (kubectl delete -k e2e/node/deploy)", pwOperatorNamespace)
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	c.deployedOperator = true
	if err := c.run(ctx, 2*time.Minute, c.kubectl, "apply", "-k", "e2e/node/deploy"); err != nil {
		return err
	}
	return until(ctx, "the operator Deployment is available", 2*time.Minute, func() (bool, string) {
		var d appsv1.Deployment
		if err := c.c.Get(ctx, types.NamespacedName{Namespace: pwOperatorNamespace, Name: pwOperatorName}, &d); err != nil {
			return false, err.Error()
		}
		return d.Status.AvailableReplicas >= 1 && d.Status.UpdatedReplicas == d.Status.Replicas,
			fmt.Sprintf("available %d, updated %d of %d", d.Status.AvailableReplicas, d.Status.UpdatedReplicas, d.Status.Replicas)
	})
}

// createCluster creates the namespace and a PostgresCluster with every
// setting at its default (failover.delay 0, asynchronous replication, the
// Lease's 15 s), as the Patroni side runs with Patroni's defaults.
func (c *pgwardenCluster) createCluster(ctx context.Context) error {
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	c.createdNS = true
	pc := &pgv1.PostgresCluster{
		ObjectMeta: metav1.ObjectMeta{Name: pwCluster, Namespace: c.ns},
		Spec: pgv1.PostgresClusterSpec{
			Instances: pwInstances,
			Storage:   pgv1.StorageSpec{Size: resource.MustParse("1Gi")},
		},
	}
	if err := c.c.Create(ctx, pc); err != nil {
		return err
	}
	c.o.Log("pgwarden: PostgresCluster %s/%s created; waiting for a primary and two streaming replicas", c.ns, pwCluster)
	return until(ctx, "the superuser Secret and the -rw Service", 2*time.Minute, func() (bool, string) {
		s, err := c.cs.CoreV1().Secrets(c.ns).Get(ctx, pwCluster+"-superuser", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		svc, err := c.cs.CoreV1().Services(c.ns).Get(ctx, pwCluster+"-rw", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		c.password, c.rwIP = string(s.Data["password"]), svc.Spec.ClusterIP
		return c.password != "" && c.rwIP != "", "secret or service incomplete"
	})
}

// until polls cond every 500 ms until it holds, the limit passes or ctx ends.
func until(ctx context.Context, what string, limit time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v; last: %s", what, limit, state)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

// checkBinary makes sure what runs as PID 1 in the pods is bin/pgwarden-instance
// from this checkout (the build the instance image carries), so the RSS and
// CPU figures are that binary's.
func (c *pgwardenCluster) checkBinary(ctx context.Context) error {
	want, err := fileSHA256(filepath.Join(c.root, "bin", "pgwarden-instance"))
	if err != nil {
		return err
	}
	for _, m := range c.members {
		pids, err := c.ManagerPIDs(ctx, m)
		if err != nil {
			return err
		}
		got, err := fileSHA256(fmt.Sprintf("/proc/%d/exe", pids[0]))
		if err != nil {
			return fmt.Errorf("cannot read the executable of %s's instance manager: %w", m, err)
		}
		if got != want {
			return fmt.Errorf("%s's instance manager (host PID %d) is not bin/pgwarden-instance of this checkout", m, pids[0])
		}
	}
	c.o.Log("pgwarden: every instance manager runs bin/pgwarden-instance (sha256 %s…)", want[:12])
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (c *pgwardenCluster) Members() []string { return c.members }

// dsn connects to host as the superuser. The password is only ever in
// memory (the probe's pgx config), never in a log line.
func (c *pgwardenCluster) dsn(host, port string, timeout int) string {
	return fmt.Sprintf("host=%s port=%s user=postgres password='%s' dbname=postgres sslmode=disable connect_timeout=%d",
		host, port, strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(c.password), timeout)
}

// ProbeDSN is the -rw Service's ClusterIP, reached from the host through
// kube-proxy, as a client in the cluster reaches it.
//
// With -pgwarden-probe hosts it is every pod IP in member order with
// target_session_attrs=read-write instead, as Patroni's probe does.
func (c *pgwardenCluster) ProbeDSN() string {
	if c.o.PgwardenProbe != "hosts" {
		return c.dsn(c.rwIP, "5432", 1)
	}
	var ips, ports []string
	for _, m := range c.members {
		ip, err := c.podIP(context.Background(), m)
		if err != nil {
			ip = "192.0.2.1" // TEST-NET-1: never answers; the other members still do
		}
		ips, ports = append(ips, ip), append(ports, "5432")
	}
	return c.dsn(strings.Join(ips, ","), strings.Join(ports, ","), 1) + " target_session_attrs=read-write"
}

func (c *pgwardenCluster) podIP(ctx context.Context, member string) (string, error) {
	c.mu.Lock()
	ip := c.podIPs[member]
	c.mu.Unlock()
	if ip != "" {
		return ip, nil
	}
	p, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, member, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if p.Status.PodIP == "" {
		return "", fmt.Errorf("pod %s has no IP yet", member)
	}
	// A pod keeps its IP while its container restarts; the scenarios never
	// delete a pod.
	c.mu.Lock()
	c.podIPs[member] = p.Status.PodIP
	c.mu.Unlock()
	return p.Status.PodIP, nil
}

func (c *pgwardenCluster) ServerAddr(member string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ip, err := c.podIP(ctx, member)
	if err != nil {
		return "?" + member // matches no server address
	}
	return ip + ":5432"
}

// Primary is the holder of the primary Lease.
func (c *pgwardenCluster) Primary(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	l, err := c.cs.CoordinationV1().Leases(c.ns).Get(ctx, roles.LeaseName(pwCluster), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", ErrNoPrimary
	}
	if err != nil {
		return "", err
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return "", ErrNoPrimary
	}
	return *l.Spec.HolderIdentity, nil
}

// SystemHealthy: the PostgresCluster's phase is Healthy, every instance
// ready, and the operator's current primary is the Lease holder.
func (c *pgwardenCluster) SystemHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var pc pgv1.PostgresCluster
	if err := c.c.Get(ctx, types.NamespacedName{Namespace: c.ns, Name: pwCluster}, &pc); err != nil {
		return err
	}
	st := pc.Status
	if st.Phase != pgv1.PhaseHealthy || st.ReadyInstances != pwInstances || st.CurrentPrimary != st.TargetPrimary {
		return fmt.Errorf("PostgresCluster phase %s (%s), %d ready", st.Phase, st.PhaseReason, st.ReadyInstances)
	}
	holder, err := c.Primary(ctx)
	if err != nil {
		return err
	}
	if holder != st.CurrentPrimary {
		return fmt.Errorf("the Lease is held by %s, the operator's primary is %s", holder, st.CurrentPrimary)
	}
	return nil
}

// Streaming: standbys connect with their pod name as application_name.
func (c *pgwardenCluster) Streaming(ctx context.Context, member string) (bool, error) {
	p, err := c.Primary(ctx)
	if err != nil {
		return false, err
	}
	ip, err := c.podIP(ctx, p)
	if err != nil {
		return false, err
	}
	return streamingOn(ctx, c.dsn(ip, "5432", 2), member)
}

// Switchover is what `kubectl annotate pod <candidate> pgwarden.io/role=primary
// --overwrite` sends (a merge patch of the annotation), without kubectl's
// start-up in the figure — as the Patroni side calls the REST API, not patronictl.
func (c *pgwardenCluster) Switchover(ctx context.Context, _, candidate string) error {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, roles.DesiredRoleAnnotation, roles.RolePrimary)
	_, err := c.cs.CoreV1().Pods(c.ns).Patch(ctx, candidate, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// container is the running instance container of member: its ID and the
// host PIDs of its instance manager (PID 1 in the container) and postmaster.
type container struct {
	id         string
	manager    int
	postmaster int // 0 if none
}

// instanceContainer finds member's running instance container on this host.
func (c *pgwardenCluster) instanceContainer(ctx context.Context, member string) (container, error) {
	uid, id, err := c.runningContainer(ctx, member)
	if err != nil {
		return container{}, err
	}
	return findContainer(uid, id)
}

// runningContainer is the pod's UID and the ID of its running instance
// container, as the kubelet reports them (one API read, no /proc scan).
func (c *pgwardenCluster) runningContainer(ctx context.Context, member string) (uid, id string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	p, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, member, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == pwContainer && cs.State.Running != nil {
			_, id, _ = strings.Cut(cs.ContainerID, "://")
		}
	}
	if id == "" {
		return "", "", fmt.Errorf("%s: the %s container is not running", member, pwContainer)
	}
	return string(p.UID), id, nil
}

// findContainer looks for the processes in the container's cgroup (cgroup
// v1 or v2: /proc/<pid>/cgroup names .../pod<uid>/<id>). The instance manager
// is the one that is PID 1 in the container's PID namespace; the postmaster
// is its child named postgres.
func findContainer(podUID, id string) (container, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return container{}, err
	}
	suffix := "/pod" + podUID + "/" + id
	var procs []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasSuffix(line, suffix) {
				procs = append(procs, pid)
				break
			}
		}
	}
	ct := container{id: id}
	for _, pid := range procs {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		if nsPID(string(st)) == 1 && alive(pid) {
			ct.manager = pid
		}
	}
	if ct.manager == 0 {
		return container{}, fmt.Errorf("container %.12s: no live PID 1 among its %d processes", id, len(procs))
	}
	for _, pid := range procs {
		if ppid, comm := parentAndComm(pid); ppid == ct.manager && comm == "postgres" {
			ct.postmaster = pid
		}
	}
	return ct, nil
}

// nsPID is the innermost PID of a process (the last field of NSpid), or 0.
func nsPID(status string) int {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// parentAndComm reads the parent PID and command name from /proc/<pid>/stat.
func parentAndComm(pid int) (int, string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, ""
	}
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i {
		return 0, ""
	}
	f := strings.Fields(s[j+1:]) // state, ppid, …
	if len(f) < 2 {
		return 0, ""
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid, s[i+1 : j]
}

// Kill sends SIGKILL to the instance manager and the postmaster, back to
// back, as a container kill does (the postmaster's children exit on
// postmaster death; the whole PID namespace goes with its PID 1 anyway).
func (c *pgwardenCluster) Kill(ctx context.Context, member string) error {
	ct, err := c.instanceContainer(ctx, member)
	if err != nil {
		return err
	}
	if ct.postmaster == 0 {
		return fmt.Errorf("%s: no postmaster under the instance manager (host PID %d)", member, ct.manager)
	}
	rec := &killRecord{id: ct.id, restarted: make(chan struct{})}
	c.mu.Lock()
	c.killed[member] = rec
	c.mu.Unlock()
	rec.at = time.Now()
	_ = syscall.Kill(ct.manager, syscall.SIGKILL)
	_ = syscall.Kill(ct.postmaster, syscall.SIGKILL)
	// Watch for the kubelet's restart from now on, for the log (Restart
	// reports when it happened).
	go func() {
		deadline := rec.at.Add(eventLimit)
		for time.Now().Before(deadline) {
			// The /proc scan only once the kubelet reports a new
			// container: polling it every 100 ms would load the machine
			// during the measurement.
			if uid, id, err := c.runningContainer(context.Background(), member); err == nil && id != rec.id {
				if _, err := findContainer(uid, id); err == nil {
					rec.after = time.Since(rec.at)
					close(rec.restarted)
					return
				}
			}
			time.Sleep(pollInterval)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for alive(ct.manager) || alive(ct.postmaster) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: instance manager %d or postmaster %d survived SIGKILL for 5s", member, ct.manager, ct.postmaster)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// RestartsByItself: the kubelet restarts a killed container on its own (the
// pod's restartPolicy is Always), and no honest hook of the test bed keeps it
// down, so "killed member streaming again" is timed from the kill.
func (c *pgwardenCluster) RestartsByItself() bool { return true }

// Restart waits for the kubelet to have restarted member's container: a new
// container running a live instance manager.
func (c *pgwardenCluster) Restart(ctx context.Context, member string) error {
	c.mu.Lock()
	rec := c.killed[member]
	delete(c.killed, member)
	c.mu.Unlock()
	if rec != nil {
		select {
		case <-rec.restarted:
			c.o.Log("  %s: the kubelet reported a new container running %.2fs after the kill", member, rec.after.Seconds())
			return nil
		case <-time.After(time.Until(rec.at.Add(eventLimit + time.Second))):
			return fmt.Errorf("%s: the kubelet did not restart the container within %s", member, eventLimit)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Not killed by Kill (healing): wait for a running instance manager.
	return until(ctx, member+"'s instance manager runs", eventLimit, func() (bool, string) {
		_, err := c.instanceContainer(ctx, member)
		return err == nil, fmt.Sprint(err)
	})
}

// ManagerPIDs is the host PID of the instance manager, PID 1 of the container.
func (c *pgwardenCluster) ManagerPIDs(ctx context.Context, member string) ([]int, error) {
	ct, err := c.instanceContainer(ctx, member)
	if err != nil {
		return nil, err
	}
	return []int{ct.manager}, nil
}

// Stop saves the logs, deletes the cluster and the operator, and lets the
// node go (down again if with-node.sh brought it up).
func (c *pgwardenCluster) Stop(ctx context.Context) error {
	var errs []error
	c.watch.stop()
	c.watch = nil
	if c.cs != nil {
		c.saveLogs(ctx)
	}
	if c.createdNS {
		pc := &pgv1.PostgresCluster{ObjectMeta: metav1.ObjectMeta{Name: pwCluster, Namespace: c.ns}}
		if err := c.c.Delete(ctx, pc); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting the cluster: %w", err))
		}
		if err := c.cs.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", c.ns, err))
		}
		// Pods stop within their grace period (stopDelay), then the volumes go.
		if err := until(ctx, "namespace "+c.ns+" is gone", 3*time.Minute, func() (bool, string) {
			_, err := c.cs.CoreV1().Namespaces().Get(ctx, c.ns, metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		}); err != nil {
			errs = append(errs, err)
		}
		if err := until(ctx, "the local-path volumes are released", 2*time.Minute, func() (bool, string) {
			pvs, err := c.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err.Error()
			}
			var left []string
			for _, pv := range pvs.Items {
				if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == c.ns {
					left = append(left, pv.Name)
				}
			}
			return len(left) == 0, strings.Join(left, ",")
		}); err != nil {
			errs = append(errs, err)
		}
	}
	if c.deployedOperator {
		if err := c.run(ctx, 3*time.Minute, c.kubectl, "delete", "-k", "e2e/node/deploy", "--ignore-not-found", "--wait=true", "--timeout=120s"); err != nil {
			errs = append(errs, err)
		}
		if err := until(ctx, "the operator's namespace is gone", 2*time.Minute, func() (bool, string) {
			_, err := c.cs.CoreV1().Namespaces().Get(ctx, pwOperatorNamespace, metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.releaseNode(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// saveLogs copies the instances' logs (and the previous container's, after a
// kill), the operator's, the cluster and the events to <-o>/pgwarden-logs.
func (c *pgwardenCluster) saveLogs(ctx context.Context) {
	if c.o.LogDir == "" || c.kubectl == "" {
		return
	}
	dir := filepath.Join(c.o.LogDir, "pgwarden-logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	save := func(name string, args ...string) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig", c.kc}, args...)...)
		out, _ := cmd.CombinedOutput()
		_ = os.WriteFile(filepath.Join(dir, name), out, 0o644)
	}
	if c.createdNS {
		for _, m := range c.members {
			save(m+".log", "logs", "-n", c.ns, m, "-c", pwContainer)
			save(m+".previous.log", "logs", "-n", c.ns, m, "-c", pwContainer, "--previous")
		}
		save("events.txt", "get", "events", "-n", c.ns, "--sort-by=.lastTimestamp", "-o", "wide")
		save("cluster.yaml", "get", "pgc", "-n", c.ns, pwCluster, "-o", "yaml")
		save("pods.yaml", "get", "pods", "-n", c.ns, "-o", "yaml")
	}
	if c.deployedOperator {
		save("operator.log", "logs", "-n", pwOperatorNamespace, "deploy/"+pwOperatorName)
	}
	// kube-proxy routes the probe through the -rw Service: its log and its
	// rule-programming metrics explain the Service's share of an outage.
	copyFile(filepath.Join(c.tbDir, "logs", "kube-proxy.log"), filepath.Join(dir, "kube-proxy.log"))
	if m, err := c.output(ctx, 10*time.Second, "curl", "-fsS", "--max-time", "5", "http://127.0.0.1:10249/metrics"); err == nil {
		var keep []string
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "kubeproxy_") {
				keep = append(keep, l)
			}
		}
		_ = os.WriteFile(filepath.Join(dir, "kube-proxy-metrics.txt"), []byte(strings.Join(keep, "\n")+"\n"), 0o644)
	}
}
