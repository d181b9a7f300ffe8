package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Timeouts of the api level. Starting takes about two seconds; the deadlines are generous for a
// loaded machine running several test packages at once.
const (
	etcdReadyTimeout      = 30 * time.Second
	apiserverReadyTimeout = 60 * time.Second
	stopGrace             = 10 * time.Second // SIGTERM to SIGKILL
	startAttempts         = 4                // a free port can be taken by a parallel test in between
	pollInterval          = 50 * time.Millisecond
)

// API is a running etcd and kube-apiserver, with an admin identity (group system:masters).
type API struct {
	// Dir holds everything of this instance: certificates, etcd's data, the logs
	// (etcd.log, kube-apiserver.log). It is the test's temporary directory.
	Dir string
	// URL is the API server's address, https://127.0.0.1:<port>.
	URL string
	// CAFile and CAData are the CA the API server's certificate is signed with.
	CAFile string
	CAData []byte
	// Kubeconfig is an admin kubeconfig file, for kubectl and for binaries under test.
	Kubeconfig string
	// Config is the admin client configuration; use rest.CopyConfig before changing it.
	Config *rest.Config
	// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
	EtcdURL string

	mu            sync.Mutex
	pki           *pki
	opts          APIOptions
	etcd, server  *process
	apiserverBin  string
	apiserverPort int
}

// APIOptions changes how StartAPIWithOptions starts the API server.
type APIOptions struct {
	// ExtraArgs are appended to kube-apiserver's arguments (later flags win).
	ExtraArgs []string
}

// StartAPI starts etcd and kube-apiserver for this test and stops them in t.Cleanup.
//
// The ServiceAccount admission plugin is disabled (there is no controller-manager to create the
// "default" ServiceAccount of new namespaces), so Pods can be created in any namespace; nothing
// runs them. Binaries come from the cache; if missing they are built first, which takes minutes
// (`make testbed-build-api` does it ahead of time).
func StartAPI(t testing.TB) *API { return StartAPIWithOptions(t, APIOptions{}) }

// StartAPIWithOptions is StartAPI with options.
func StartAPIWithOptions(t testing.TB, opts APIOptions) *API {
	t.Helper()
	etcdBin := Binary(t, "etcd")
	apiserverBin := Binary(t, "kube-apiserver")
	dir := t.TempDir() // removed after the cleanup below has stopped the processes
	p, err := newPKI(dir)
	if err != nil {
		t.Fatalf("testbed: cannot create certificates: %v", err)
	}
	a := &API{Dir: dir, CAFile: p.caFile, CAData: p.caPEM, pki: p, opts: opts, apiserverBin: apiserverBin}
	t.Cleanup(a.Stop)

	if err := a.startEtcd(etcdBin); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if err := a.startServer(0); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	a.Config = &rest.Config{
		Host:            a.URL,
		BearerToken:     p.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		QPS:             100, Burst: 200,
	}
	a.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(a.Kubeconfig, a.Config, "admin"); err != nil {
		t.Fatalf("testbed: cannot write kubeconfig: %v", err)
	}
	return a
}

func (a *API) startEtcd(bin string) error {
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		data := filepath.Join(a.Dir, "etcd")
		_ = os.RemoveAll(data)
		p, err := startProcess("etcd", filepath.Join(a.Dir, "etcd.log"), bin,
			"--name=default", "--data-dir="+data,
			"--listen-client-urls="+client, "--advertise-client-urls="+client,
			"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
			"--initial-cluster=default="+peer, "--initial-cluster-state=new",
			"--unsafe-no-fsync=true", "--log-level=warn")
		if err != nil {
			return err
		}
		err = waitHTTP(p, client+"/health", nil, etcdReadyTimeout, func(code int, body string) bool {
			return code == http.StatusOK && strings.Contains(body, `"health":"true"`)
		})
		if err == nil {
			a.etcd, a.EtcdURL = p, client
			return nil
		}
		p.stop(stopGrace)
		lastErr = fmt.Errorf("etcd did not become healthy: %w\n--- tail of %s ---\n%s", err, p.logPath, p.logTail(30))
		if !p.logContains("address already in use") {
			return lastErr
		}
	}
	return lastErr
}

// startServer starts kube-apiserver on port, or on a free port if port is 0.
func (a *API) startServer(port int) error {
	fixed := port != 0 // a restart keeps its address
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if !fixed {
			ports, err := freePorts(1)
			if err != nil {
				return err
			}
			port = ports[0]
		}
		args := []string{
			"--etcd-servers=" + a.EtcdURL,
			"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
			"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
			"--cert-dir=" + filepath.Join(a.Dir, "apiserver-certs"),
			"--tls-cert-file=" + a.pki.certFile, "--tls-private-key-file=" + a.pki.keyFile,
			"--client-ca-file=" + a.pki.caFile,
			"--token-auth-file=" + a.pki.tokenFile,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + a.pki.saPubFile,
			"--service-account-signing-key-file=" + a.pki.saKeyFile,
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--allow-privileged=true",
			"--profiling=false",
		}
		if !hasFlag(a.opts.ExtraArgs, "--disable-admission-plugins") && !hasFlag(a.opts.ExtraArgs, "--enable-admission-plugins") {
			args = append(args, "--disable-admission-plugins=ServiceAccount")
		}
		args = append(args, a.opts.ExtraArgs...)
		p, err := startProcess("kube-apiserver", filepath.Join(a.Dir, "kube-apiserver.log"), a.apiserverBin, args...)
		if err != nil {
			return err
		}
		url := "https://127.0.0.1:" + strconv.Itoa(port)
		err = waitHTTP(p, url+"/readyz", a.pki, apiserverReadyTimeout, func(code int, _ string) bool {
			return code == http.StatusOK
		})
		if err == nil {
			a.mu.Lock()
			a.server, a.URL, a.apiserverPort = p, url, port
			a.mu.Unlock()
			return nil
		}
		p.stop(stopGrace)
		lastErr = fmt.Errorf("kube-apiserver did not become ready: %w\n--- tail of %s ---\n%s", err, p.logPath, p.logTail(30))
		if !p.logContains("address already in use") {
			return lastErr
		}
	}
	return lastErr
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// StopServer stops kube-apiserver (etcd keeps running and keeps the data): clients see the API
// server unreachable until StartServer.
func (a *API) StopServer(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	p := a.server
	a.server = nil
	a.mu.Unlock()
	p.stop(stopGrace)
}

// StartServer starts kube-apiserver again after StopServer, on the same address.
func (a *API) StartServer(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	running := a.server != nil
	a.mu.Unlock()
	if running {
		t.Fatalf("testbed: kube-apiserver is already running")
	}
	if err := a.startServer(a.apiserverPort); err != nil {
		t.Fatalf("testbed: %v", err)
	}
}

// Stop stops kube-apiserver and etcd. It is idempotent and registered with t.Cleanup.
func (a *API) Stop() {
	a.mu.Lock()
	server, etcd := a.server, a.etcd
	a.server, a.etcd = nil, nil
	a.mu.Unlock()
	server.stop(stopGrace)
	etcd.stop(stopGrace)
}

// Clientset returns an admin clientset.
func (a *API) Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(a.Config)
	if err != nil {
		t.Fatalf("testbed: cannot create clientset: %v", err)
	}
	return cs
}

// ServiceAccountConfig returns a client configuration that authenticates as the ServiceAccount
// namespace/name, with a token from the TokenRequest API, valid for an hour. It creates the
// namespace and the ServiceAccount if they do not exist; grant it permissions with RBAC objects
// to test least privilege.
func (a *API) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := a.Clientset(t)
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("testbed: cannot create namespace %s: %v", namespace, err)
	}
	_, err = cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("testbed: cannot create ServiceAccount %s/%s: %v", namespace, name, err)
	}
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("testbed: cannot get a token for %s/%s: %v", namespace, name, err)
	}
	return &rest.Config{
		Host:            a.URL,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: a.CAData},
		QPS:             100, Burst: 200,
	}
}

// WriteKubeconfig writes cfg (bearer token or client certificate) as a kubeconfig file in the
// test bed's directory and returns its path; name names the file and the user in it.
func (a *API) WriteKubeconfig(t testing.TB, cfg *rest.Config, name string) string {
	t.Helper()
	path := filepath.Join(a.Dir, name+".kubeconfig")
	if err := writeKubeconfig(path, cfg, name); err != nil {
		t.Fatalf("testbed: cannot write kubeconfig: %v", err)
	}
	return path
}

func writeKubeconfig(path string, cfg *rest.Config, user string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["testbed"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken,
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["testbed"] = &clientcmdapi.Context{Cluster: "testbed", AuthInfo: user}
	kc.CurrentContext = "testbed"
	return clientcmd.WriteToFile(*kc, path)
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cannot find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var errExited = errors.New("process exited")

// waitHTTP polls url until ok accepts the answer, the process exits, or timeout passes.
func waitHTTP(p *process, url string, auth *pki, timeout time.Duration, ok func(code int, body string) bool) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{}}
	if auth != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(auth.caPEM)
		tr.TLSClientConfig.RootCAs = pool
	}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	defer tr.CloseIdleConnections()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	last := "no answer yet"
	for {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != nil {
			req.Header.Set("Authorization", "Bearer "+auth.adminToken)
		}
		if resp, err := client.Do(req); err != nil {
			last = err.Error()
		} else {
			body := make([]byte, 4096)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if ok(resp.StatusCode, string(body[:n])) {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body[:n])))
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w (%v) before %s answered", errExited, p.err, url)
		case <-deadline.C:
			return fmt.Errorf("%s not ready after %s: %s", url, timeout, last)
		case <-tick.C:
		}
	}
}
