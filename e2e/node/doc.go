// Package node holds pgwarden's end-to-end test on the real single-node test bed: the operator
// deployed from deploy/ (through the overlay in deploy/, one replica, the test bed's images) and a
// 3-instance PostgresCluster in real pods, then a switchover by annotation and a failover by
// deleting the primary pod, each followed by a write through the -rw Service.
//
// The test is behind the build tag "node". e2e/node/run.sh brings the node up if it is not (and
// down again afterwards, checking the host is as it was); against a running node:
//
//	go test -tags node -run TestNode -count=1 -v -timeout 15m ./e2e/node/
package node
