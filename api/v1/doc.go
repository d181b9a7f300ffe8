// Package v1 is the pgwarden.io/v1 API: the PostgresCluster resource.
//
// It owns only the Go types and their schema markers; the CRD in deploy/crd is generated from
// them (`make manifests`, see deploy/README.md). Validation that the API server can do (ranges,
// immutability, pod names) lives here as OpenAPI and CEL markers, not in the operator, so that a
// bad spec is rejected when it is written and never half-applied.
//
// +kubebuilder:object:generate=true
// +groupName=pgwarden.io
package v1
