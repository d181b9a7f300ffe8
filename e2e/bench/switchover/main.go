// Command switchover measures a switchover by annotation on this machine: two
// instance managers (the real binary, each PID 1 of its own PID namespace, real
// PostgreSQL 15) against a real kube-apiserver and etcd from the test bed's api
// level; the primary is switched back and forth by writing pgwarden.io/role on
// both Pods, as the operator does. For each switchover it measures, from the
// moment the annotations are written:
//
//   - write: until the new primary accepts a write (a fresh connection and an
//     INSERT, tried every 10 ms);
//   - stream: until the old primary streams from the new one again
//     (pg_stat_wal_receiver: streaming, sender_host = the new primary).
//
// It prints a Markdown table with every run and the medians. Run it as root:
//
//	go run ./e2e/bench/switchover -bin bin/pgwarden -runs 5
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

const (
	namespace = "bench"
	cluster   = "bench"
	password  = "bench-super"
	replPass  = "bench-repl"
)

func main() {
	bin := flag.String("bin", "bin/pgwarden", "the pgwarden binary to measure")
	binDir := flag.String("pg-bin-dir", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	runs := flag.Int("runs", 6, "switchovers (alternating directions; the medians are reported)")
	out := flag.String("o", "", "also write the table to this file")
	flag.Parse()
	tb := &benchTB{}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatal); !ok {
					panic(r)
				}
				fmt.Fprintln(os.Stderr, "bench:", r)
				code = 1
			}
		}()
		if err := run(tb, *bin, *binDir, *runs, *out); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			code = 1
		}
	}()
	tb.cleanup()
	os.Exit(code)
}

type member struct {
	name, ip string
	port     int
	dir      string
	cmd      *exec.Cmd
}

func run(tb *benchTB, bin, binDir string, runs int, out string) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: postgres runs as the postgres user, and each manager in its own PID namespace")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	api := testbed.StartAPI(tb)
	admin := api.Clientset(tb)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pgwarden-bench-switchover-")
	if err != nil {
		return err
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	super, repl := filepath.Join(dir, "super"), filepath.Join(dir, "repl")
	os.WriteFile(super, []byte(password+"\n"), 0o600)
	os.WriteFile(repl, []byte(replPass+"\n"), 0o600)

	pods := []string{cluster + "-0", cluster + "-1"}
	restricted := api.ServiceAccountConfig(tb, namespace, "instance")
	if _, err := admin.RbacV1().Roles(namespace).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "instance"},
		Rules: roles.PolicyRules(cluster, pods)}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := admin.RbacV1().RoleBindings(namespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "instance"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "instance"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "instance", Namespace: namespace}}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	kubeconfig := api.WriteKubeconfig(tb, restricted, "instance")
	port, err := freePort()
	if err != nil {
		return err
	}
	var ms []*member
	for i, name := range pods {
		m := &member{name: name, ip: fmt.Sprintf("127.0.79.%d", i+1), port: port, dir: filepath.Join(dir, name)}
		role := "replica"
		if i == 0 {
			role = "primary"
		}
		p, err := admin.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{roles.DesiredRoleAnnotation: role}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "pgwarden"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		p.Status.PodIP = m.ip
		if _, err := admin.CoreV1().Pods(namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			return err
		}
		sp, _ := freePort()
		mp, _ := freePort()
		m.cmd = exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", bin, "instance", "run",
			"--pgdata", filepath.Join(m.dir, "pgdata"), "--port", strconv.Itoa(port), "--listen-addresses", m.ip,
			"--socket-dir", filepath.Join(m.dir, "run"),
			"--status-addr", m.ip+":"+strconv.Itoa(sp), "--metrics-addr", m.ip+":"+strconv.Itoa(mp),
			"--superuser-password-file", super, "--replication-password-file", repl, "--pg-bin-dir", binDir,
			"--pod-name", name, "--namespace", namespace, "--cluster", cluster, "--kubeconfig", kubeconfig)
		m.cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := m.cmd.Start(); err != nil {
			return err
		}
		tb.Cleanup(func() { stop(m) })
		ms = append(ms, m)
	}
	fmt.Fprintln(os.Stderr, "waiting for the cluster (initdb, clone)...")
	if err := waitFor(120*time.Second, func() bool { return m0(ms).acceptsWrite() && ms[1].streamingFrom(ms[0]) }); err != nil {
		return fmt.Errorf("cluster did not come up: %w (logs in %s)", err, dir)
	}
	var writes, streams []time.Duration
	var rows []string
	for r := 0; r < runs; r++ {
		from, to := ms[r%2], ms[(r+1)%2]
		time.Sleep(time.Second) // let the last switchover settle
		began := time.Now()
		if err := annotate(admin, from.name, "replica", to.name, "primary"); err != nil {
			return err
		}
		if err := waitFor(30*time.Second, to.acceptsWrite); err != nil {
			return fmt.Errorf("run %d: %s never accepted a write: %w", r+1, to.name, err)
		}
		w := time.Since(began)
		if err := waitFor(60*time.Second, func() bool { return from.streamingFrom(to) }); err != nil {
			return fmt.Errorf("run %d: %s never streamed again: %w", r+1, from.name, err)
		}
		s := time.Since(began)
		writes, streams = append(writes, w), append(streams, s)
		rows = append(rows, fmt.Sprintf("| %d | %s → %s | %d | %d |", r+1, from.name, to.name, w.Milliseconds(), s.Milliseconds()))
		fmt.Fprintf(os.Stderr, "run %d/%d: write %s, stream %s\n", r+1, runs, w.Round(time.Millisecond), s.Round(time.Millisecond))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "### Switchover by annotation (%d runs, %s, PostgreSQL 15, real kube-apiserver)\n\n", runs, time.Now().UTC().Format("2006-01-02"))
	b.WriteString("| run | direction | annotation → new primary accepts a write (ms) | annotation → old primary streams again (ms) |\n")
	b.WriteString("| ---: | --- | ---: | ---: |\n")
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	fmt.Fprintf(&b, "| **median** | | **%d** | **%d** |\n", median(writes).Milliseconds(), median(streams).Milliseconds())
	fmt.Print(b.String())
	if out != "" {
		return os.WriteFile(out, []byte(b.String()), 0o644)
	}
	return nil
}

func m0(ms []*member) *member { return ms[0] }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func annotate(admin kubernetes.Interface, kv ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i+1 < len(kv); i += 2 {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.DesiredRoleAnnotation: kv[i+1]}}})
		if _, err := admin.CoreV1().Pods(namespace).Patch(ctx, kv[i], types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func (m *member) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", m.ip, m.port))
	if err != nil {
		return nil, err
	}
	cfg.Password = password
	return pgx.ConnectConfig(ctx, cfg)
}

func (m *member) acceptsWrite() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := m.connect(ctx)
	if err != nil {
		return false
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "CREATE TABLE IF NOT EXISTS bench (at timestamptz); INSERT INTO bench VALUES (now())")
	return err == nil
}

func (m *member) streamingFrom(up *member) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := m.connect(ctx)
	if err != nil {
		return false
	}
	defer c.Close(context.Background())
	var status, host *string
	if err := c.QueryRow(ctx, "SELECT status, sender_host FROM pg_stat_wal_receiver").Scan(&status, &host); err != nil {
		return false
	}
	return status != nil && host != nil && *status == "streaming" && *host == up.ip
}

func stop(m *member) {
	if m.cmd.Process == nil {
		return
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", m.cmd.Process.Pid, m.cmd.Process.Pid))
	if f := strings.Fields(string(b)); len(f) > 0 {
		pid, _ := strconv.Atoi(f[0])
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func waitFor(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// benchTB lets a program use the test bed's api level, which takes a
// testing.TB: the methods the test bed calls are implemented here; a Fatal
// panics with a fatal, which main recovers from after running the cleanups.
type benchTB struct {
	testing.TB // never set: any other method panics
	cleanups   []func()
}

type fatal string

func (b *benchTB) Helper()                    {}
func (b *benchTB) Cleanup(f func())           { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) Log(args ...any)            { fmt.Fprintln(os.Stderr, args...) }
func (b *benchTB) Logf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (b *benchTB) Errorf(f string, args ...any) {
	fmt.Fprintf(os.Stderr, f+"\n", args...)
}
func (b *benchTB) Fatal(args ...any)            { panic(fatal(fmt.Sprint(args...))) }
func (b *benchTB) Fatalf(f string, args ...any) { panic(fatal(fmt.Sprintf(f, args...))) }
func (b *benchTB) Failed() bool                 { return false }
func (b *benchTB) Name() string                 { return "bench-switchover" }
func (b *benchTB) TempDir() string {
	d, err := os.MkdirTemp("", "pgwarden-bench-api-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (b *benchTB) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}
