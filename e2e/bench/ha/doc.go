// Command ha is the HA benchmark of issue 6: it runs Patroni and pgwarden on
// this machine, in one invocation, through the same scenarios and the same
// write probe, and prints a Markdown table of medians with the ratio
// pgwarden/Patroni, plus a PNG chart.
//
// It owns: starting and stopping the systems under test (temporary
// directories, loopback ports, processes it started, stopped by PID; for
// pgwarden a namespace, the operator and a PostgresCluster on the node test
// bed, which it obtains through e2e/testbed/with-node.sh), the write probe,
// the scenarios and the report. It must not touch anything else on the
// machine: no system service is started, install.sh stops and disables the
// ones Debian's packages would start, and with-node.sh checks the host is as
// before when it brought the node up.
//
// Files: system.go (the System/Cluster interface a system implements),
// patroni.go (Patroni 3.0.2 + etcd on loopback), pgwarden.go (the operator
// and a 3-instance PostgresCluster on the node test bed; pgwarden_watch.go
// logs what routes the probe),
// probe.go (the write probe), scenario.go (the scenarios), report.go and
// chart.go (the table and the chart), proc.go (/proc readings).
//
// Run as root: make bench (go run ./e2e/bench/ha -runs 3 -o .bench/ha).
package main
