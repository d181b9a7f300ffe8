// Package testbed starts real Kubernetes components for pgwarden's tests.
//
// It owns the "api" level: StartAPI runs etcd and kube-apiserver, built from the Go module proxy by
// build.sh and cached outside the checkout, on free loopback ports with their own temporary
// directories, and stops them (by process group) when the test ends. Parallel test packages each
// get their own pair.
//
// The "node" level (a whole single-node cluster with containerd, kubelet, kube-proxy, CoreDNS and
// local-path-provisioner) is started by node.sh (`make testbed-up`), not by this package; its
// self-test lives in selftest_test.go behind the build tag "testbed". See README.md.
//
// This package never touches host state: no iptables, no mounts, no sysctls, nothing outside the
// test's temporary directory and the binary cache.
package testbed
