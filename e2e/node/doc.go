// Package node holds pgwarden's end-to-end tests on the real single-node test bed, behind the
// build tag "node":
//
//   - TestNode: the operator deployed from deploy/ (through the overlay in deploy/, one replica,
//     the test bed's images) and a 3-instance PostgresCluster in real pods, then a switchover by
//     annotation and a failover by deleting the primary pod, each followed by a write through the
//     -rw Service.
//   - TestFaults: the fault suite (faults_test.go): real faults (container and postmaster kills,
//     pod deletions, a network partition, an unready primary, the operator leader killed during a
//     failover, switchovers) injected into an asynchronous and a synchronous cluster under the
//     write checker (e2e/checker), with results in .bench/faults/.
//
// e2e/node/run.sh runs both, bringing the node up if it is not (and down again afterwards,
// checking the host is as it was); against a running node:
//
//	go test -tags node -run 'TestNode|TestFaults' -count=1 -v -timeout 45m ./e2e/node/
//
// e2e/node/node.mk has the targets e2e-faults, e2e-fault and e2e-soak.
package node
