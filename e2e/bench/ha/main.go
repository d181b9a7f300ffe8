package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-ha:", err)
		os.Exit(1)
	}
}

func run() error {
	runs := flag.Int("runs", 3, "runs of every scenario per system (medians are reported; at least 3 for the README)")
	sysList := flag.String("systems", "patroni,pgwarden", "comma-separated systems to measure: patroni, pgwarden")
	outDir := flag.String("o", ".bench/ha", "output directory: table.md, chart.png, runs.tsv, logs")
	idle := flag.Duration("idle", 30*time.Second, "idle window for the manager's CPU and RSS (≥ 3 Patroni loop_waits)")
	settle := flag.Duration("settle", 5*time.Second, "time a healthy cluster is left alone before each scenario")
	spread := flag.Duration("phase-spread", 10*time.Second,
		"faults of successive runs are spread evenly over this much time after the warm-up (≥ the longest manager loop: Patroni's loop_wait)")
	scenarios := flag.String("scenarios", "idle,switchover,kill", "comma-separated scenarios to run (all three for the README)")
	pwProbe := flag.String("pgwarden-probe", "service", "pgwarden's probe goes through the -rw Service (service) or to every pod IP with target_session_attrs=read-write like Patroni's (hosts)")
	pgBinDir := flag.String("pg-bin-dir", "/usr/lib/postgresql/15/bin", "PostgreSQL 15 binaries")
	flag.Parse()
	if *runs < 1 {
		return fmt.Errorf("-runs must be at least 1")
	}
	if *pwProbe != "service" && *pwProbe != "hosts" {
		return fmt.Errorf("-pgwarden-probe must be service or hosts")
	}
	only := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "idle", "switchover", "kill":
			only[s] = true
		case "":
		default:
			return fmt.Errorf("unknown scenario %q in -scenarios (want idle, switchover, kill)", s)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (installs packages, runs PostgreSQL as the postgres user)")
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	outAbs, err := filepath.Abs(*outDir)
	if err != nil {
		return err
	}

	// SIGINT/SIGTERM cancel the context; every wait watches it and the
	// deferred Stop of each cluster runs on a fresh context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
	opts := Options{PGBinDir: *pgBinDir, WorkDir: os.TempDir(), LogDir: outAbs, Log: logf, PgwardenProbe: *pwProbe}

	byKey := map[string]*results{}
	for _, key := range strings.Split(*sysList, ",") {
		key = strings.TrimSpace(key)
		if key == "" {
			continue
		}
		sys, err := newSystem(key, opts)
		if err != nil {
			return err
		}
		byKey[key] = runSystem(ctx, sys, key, *runs, *idle, *settle, *spread, only, filepath.Join(outAbs, "writes"), logf)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted")
	}
	// Columns are always Patroni and pgwarden; a system not run is n/a.
	for key, name := range map[string]string{"patroni": "Patroni", "pgwarden": "pgwarden"} {
		if byKey[key] == nil {
			byKey[key] = &results{system: name, absent: "not selected with -systems"}
		}
	}
	h := header{
		when: time.Now(), runs: *runs, idle: *idle, spread: *spread,
		command:    "go run ./e2e/bench/ha " + strings.Join(os.Args[1:], " "),
		host:       hostDescription(),
		patroniVer: patroniVersion(),
	}
	table := markdown(h, byKey["patroni"], byKey["pgwarden"])
	fmt.Print(table)
	if err := os.WriteFile(filepath.Join(*outDir, "table.md"), []byte(table), 0o644); err != nil {
		return err
	}
	png, err := chartPNG(fmt.Sprintf("HA benchmark, medians of %d runs", *runs),
		[]*results{byKey["patroni"], byKey["pgwarden"]}, []string{"Patroni", "pgwarden"})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*outDir, "chart.png"), png, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*outDir, "runs.tsv"), []byte(runsTSV(byKey["patroni"], byKey["pgwarden"])), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s/{table.md,chart.png,runs.tsv}\n", *outDir)
	return nil
}

// runsTSV lists every per-run value, for whoever wants more than medians.
func runsTSV(rs ...*results) string {
	var b strings.Builder
	b.WriteString("system\tfigure\trun\tvalue\n")
	for _, r := range rs {
		for f := figure(0); f < numFigures; f++ {
			for i, v := range r.values[f] {
				fmt.Fprintf(&b, "%s\t%s (%s)\t%d\t%g\n", r.system, rows[f].label, rows[f].unit, i+1, v)
			}
		}
	}
	return b.String()
}

func patroniVersion() string {
	out, err := exec.Command("/usr/bin/python3", "/usr/bin/patroni", "--version").Output()
	if err != nil {
		return "(version unknown)"
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "patroni"))
}

func hostDescription() string {
	cpus := runtime.NumCPU()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	load, _ := os.ReadFile("/proc/loadavg")
	l := strings.Fields(string(load))
	if len(l) >= 3 {
		return fmt.Sprintf("%d CPUs, Linux %s, load average at the end %s %s %s (the machine is shared)",
			cpus, strings.TrimSpace(string(kernel)), l[0], l[1], l[2])
	}
	return fmt.Sprintf("%d CPUs, Linux %s", cpus, strings.TrimSpace(string(kernel)))
}
