# make demo / make demo-down (see e2e/demo/demo.sh)
.PHONY: demo demo-down demo-env readme-check

demo: deps ## a 3-instance PostgresCluster "demo" on the local node test bed (root; builds, starts the node, deploys the operator)
	e2e/demo/demo.sh up

demo-down: ## delete the demo cluster and the operator, stop the node test bed and restore the host
	e2e/demo/demo.sh down

demo-env: ## print the exports (KUBECONFIG; PATH with kubectl and bin/kubectl-pgwarden) for the demo: eval "$(make -s demo-env)"
	@e2e/demo/demo.sh env

readme-check: ## run the README's quick start on the node test bed (brings the node up and down itself)
	e2e/readme/check.sh
