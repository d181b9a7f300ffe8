# The fault suite on the node test bed (e2e/node/faults_test.go, e2e/checker). Included by the
# Makefile. Every target brings the node up and down around it (e2e/testbed/with-node.sh) and
# queues behind other checkouts' node runs for PGWARDEN_NODE_WAIT seconds.
#
#   make e2e-faults                        every scenario once, async and sync (what make test runs, with TestNode)
#   make e2e-fault FAULT=partition MODE=sync   one scenario (comma lists work for both)
#   make e2e-soak N=50 [MODE=sync] [SEED=1]    N random faults back to back
# Results: .bench/faults/<time>.tsv and .md, and .bench/faults/latest.md.

FAULT ?=
MODE ?= async,sync
N ?= 50
SEED ?=

.PHONY: e2e-faults e2e-fault e2e-soak
e2e-faults: ## the fault suite on the node test bed: every fault once, async and sync, under the write checker (writes .bench/faults/)
	e2e/node/run.sh -run '^TestFaults$$'

e2e-fault: ## one fault scenario on the node test bed: make e2e-fault FAULT=partition MODE=sync
	@[ -n "$(FAULT)" ] || { echo "FAULT=<scenario> is required (see scenarios() in e2e/node/faults_test.go)" >&2; exit 2; }
	PGWARDEN_FAULTS='$(FAULT)' PGWARDEN_FAULT_MODES='$(MODE)' e2e/node/run.sh -run '^TestFaults$$'

e2e-soak: ## N random faults back to back on the node test bed: make e2e-soak N=50 [MODE=sync] [SEED=...]
	PGWARDEN_SOAK='$(N)' PGWARDEN_SOAK_SEED='$(SEED)' PGWARDEN_FAULT_MODES='$(MODE)' e2e/node/run.sh -run '^TestFaults$$' -timeout 600m
