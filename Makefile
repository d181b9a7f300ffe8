# pgwarden — build, test, test bed. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/pgwarden/pgwarden/pkg/version.Version=$(VERSION)

.PHONY: help build build-instance test unit deps clean
help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

build: ## build bin/pgwarden and the kubectl plugin bin/kubectl-pgwarden
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/pgwarden ./cmd/pgwarden
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kubectl-pgwarden ./cmd/kubectl-pgwarden

test: deps testbed-build ## run every test: unit, integration (real PostgreSQL, real kube-apiserver), the node test bed's self-test and the operator on the node
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...
	$(MAKE) testbed-selftest
	$(MAKE) e2e-node
	$(MAKE) readme-check

.PHONY: e2e-node
e2e-node: ## operator and real instance pods on the node test bed: Healthy, switchover, failover (up and down around it)
	e2e/node/run.sh

build-instance: ## build bin/pgwarden-instance: the instance image's binary, without the operator (-tags noperator)
	CGO_ENABLED=0 $(GO) build -trimpath -tags noperator -ldflags '$(LDFLAGS)' -o bin/pgwarden-instance ./cmd/pgwarden

deps: ## install what the tests need on a fresh Debian machine
	./e2e/deps.sh

clean: ## remove build output
	rm -rf bin

include e2e/testbed/testbed.mk
include e2e/demo/demo.mk
include e2e/node/node.mk

CONTROLLER_GEN ?= $(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.21.0

.PHONY: manifests
manifests: ## regenerate deepcopy, the CRD and the operator's RBAC from the Go types; copy them into the Helm chart
	$(CONTROLLER_GEN) object paths=./api/... crd:crdVersions=v1,maxDescLen=400 output:crd:artifacts:config=deploy/crd
	$(CONTROLLER_GEN) rbac:roleName=pgwarden-operator paths=./pkg/operator/... output:rbac:artifacts:config=deploy/rbac
	cp deploy/crd/pgwarden.io_postgresclusters.yaml deploy/helm/pgwarden-operator/crds/
	cp deploy/rbac/role.yaml deploy/helm/pgwarden-operator/files/role.yaml

.PHONY: bench bench-switchover
bench: build build-instance ## HA benchmark, Patroni vs pgwarden (on the node test bed; PGWARDEN_NODE_WAIT=SECONDS queues for it), medians of 3 runs (writes .bench/ha/)
	$(GO) run ./e2e/bench/ha -runs 3 -systems patroni,pgwarden -o .bench/ha

bench-switchover: build ## switchover by annotation on the api test bed, medians (writes .bench/switchover.md)
	mkdir -p .bench
	$(GO) run ./e2e/bench/switchover -bin bin/pgwarden -o .bench/switchover.md

.PHONY: bench-instance
bench-instance: build-instance ## measure the instance manager (the instance image's build): RSS, probe latency, startup (writes .bench/instance.md)
	mkdir -p .bench
	$(GO) run ./e2e/bench/instance -bin bin/pgwarden-instance -o .bench/instance.md
