// Package operator holds the operator's integration tests: the real reconciler (the whole
// controller-runtime manager, in process) against a real kube-apiserver and etcd from
// testbed.StartAPI, with the CRD from deploy/crd.
//
// There is no kubelet: the tests play it (they set Pod status, the instances' role label and
// the primary Lease) and serve each instance's /status from a loopback HTTP server that the
// operator's status client is pointed at. They assert on the resulting objects, never on calls.
package operator
