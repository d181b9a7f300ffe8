// Package roles holds the integration tests (tier 2) of Kubernetes mode of
// `pgwarden instance run`: several instance managers — the real binary, built by
// the tests, each PID 1 in its own PID namespace — run real PostgreSQL servers
// against a real kube-apiserver and etcd (e2e/testbed's api level). Their Pods
// exist only as API objects: the test plays the kubelet (it creates the Pods
// and sets status.podIP) and the operator (it writes pgwarden.io/role).
//
// Each instance listens on its own loopback address (127.0.77.N, the "pod IP")
// and all on the same port, as pods do. Faults are real: iptables rules on
// those addresses cut the replication link; the API server is stopped to
// partition the primary from it.
//
// They need root, PostgreSQL 15 and the cached test bed binaries
// (`make testbed-build-api`).
package roles
