// Command tbapp is the one static program inside the test bed's own images. It is chosen by the
// name it is started as (or the first argument):
//
//   - pause: the sandbox ("pause") process of every pod. Sleeps until SIGTERM or SIGINT and
//     reaps any orphan it inherits.
//   - serve: the self-test's workload. Serves HTTP on -addr ("/" says hello, "/ready" is the
//     readiness probe); with -record FILE it appends "start", "SIGTERM <unix-ms>" and, after
//     SIGTERM, "alive <unix-ms>" every 100 ms to FILE, so a test can tell when SIGTERM came
//     and that the process was still alive until SIGKILL ended it. With -ignore-term it keeps
//     running after SIGTERM (to be killed at the end of the grace period); otherwise it exits 0.
//     With -write FILE it writes the pod's hostname into FILE at start (volume tests).
//   - get: `get [-sa] [-timeout D] URL` fetches URL until it answers 200 or the timeout passes,
//     prints the body and exits 0 (else 1). With -sa it trusts and authenticates with the pod's
//     ServiceAccount credentials (to reach the API server through the kubernetes Service).
//   - local-path-helper: the helper local-path-provisioner runs in a pod to create or delete a
//     volume directory: `-p PATH -s SIZE -m MODE -a create|delete`.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	switch {
	case name == "pause":
	case name == "local-path-helper":
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		name, args = args[0], args[1:]
	}
	var err error
	switch name {
	case "pause":
		err = pause()
	case "serve":
		err = serve(args)
	case "get":
		err = get(args)
	case "local-path-helper":
		err = localPathHelper(args)
	default:
		err = fmt.Errorf("unknown mode %q (want pause, serve, get or local-path-helper)", name)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tbapp %s: %v\n", name, err)
		os.Exit(1)
	}
}

// pause blocks until SIGTERM or SIGINT, reaping every child that exits meanwhile.
func pause() error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return nil
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
	return nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", ":8080", "HTTP listen address")
	record := fs.String("record", "", "append lifecycle events to this file")
	write := fs.String("write", "", "write the hostname into this file at start")
	ignoreTerm := fs.Bool("ignore-term", false, "keep running after SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, _ := os.Hostname()
	rec := func(format string, a ...any) {
		if *record == "" {
			return
		}
		f, err := os.OpenFile(*record, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot record: %v\n", err)
			return
		}
		defer f.Close()
		fmt.Fprintf(f, format+"\n", a...)
		_ = f.Sync()
	}
	if *write != "" {
		if err := os.WriteFile(*write, []byte(host+"\n"), 0o644); err != nil {
			return fmt.Errorf("cannot write %s: %w", *write, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s\n", host) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	rec("start %d", time.Now().UnixMilli())

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		return err
	case sig := <-sigs:
		rec("%s %d", signalName(sig), time.Now().UnixMilli())
	}
	if !*ignoreTerm {
		rec("exit %d", time.Now().UnixMilli())
		return nil
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		case <-tick.C:
			rec("alive %d", time.Now().UnixMilli())
		case sig := <-sigs:
			rec("%s %d", signalName(sig), time.Now().UnixMilli())
		}
	}
}

// signalName is how the record names a signal: SIGTERM or SIGINT.
func signalName(sig os.Signal) string {
	if sig == syscall.SIGINT {
		return "SIGINT"
	}
	return "SIGTERM"
}

// localPathHelper creates (mode 0777) or deletes a local-path-provisioner volume directory.
func localPathHelper(args []string) error {
	fs := flag.NewFlagSet("local-path-helper", flag.ContinueOnError)
	path := fs.String("p", "", "volume directory")
	_ = fs.String("s", "", "size in bytes (ignored)")
	mode := fs.String("m", "Filesystem", "volume mode")
	action := fs.String("a", "", "create or delete")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || *path == "/" {
		return fmt.Errorf("refusing volume path %q", *path)
	}
	if *mode != "Filesystem" {
		return fmt.Errorf("volume mode %q is not supported", *mode)
	}
	switch *action {
	case "create":
		if err := os.MkdirAll(*path, 0o777); err != nil {
			return err
		}
		return os.Chmod(*path, 0o777)
	case "delete":
		return os.RemoveAll(*path)
	}
	return fmt.Errorf("unknown action %q", *action)
}

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	useSA := fs.Bool("sa", false, "use the pod's ServiceAccount token and CA")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one URL")
	}
	url := fs.Arg(0)
	tr := &http.Transport{}
	var token string
	if *useSA {
		ca, err := os.ReadFile(saDir + "/ca.crt")
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		b, err := os.ReadFile(saDir + "/token")
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
	}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(*timeout)
	for {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				os.Stdout.Write(body)
				return nil
			}
			err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: %w", url, err)
		}
		fmt.Fprintf(os.Stderr, "GET %s: %v; retrying\n", url, err)
		t := time.NewTimer(500 * time.Millisecond)
		<-t.C
	}
}
