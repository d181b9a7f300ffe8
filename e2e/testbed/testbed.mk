# test bed targets (see e2e/testbed/README.md)
TESTBED_SH := e2e/testbed

.PHONY: testbed-build-api testbed-build testbed-up testbed-down testbed-status testbed-images \
	testbed-selftest testbed-test

testbed-build-api: ## build (or find in the cache) etcd, kube-apiserver, kubectl
	$(TESTBED_SH)/build.sh api

testbed-build: ## build (or find in the cache) every test bed binary
	$(TESTBED_SH)/build.sh node

testbed-up: ## start the single-node cluster; kubeconfig in .testbed/kubeconfig
	$(TESTBED_SH)/node.sh up

testbed-down: ## stop the single-node cluster and restore the host
	$(TESTBED_SH)/node.sh down

testbed-status: ## say which test bed components run
	$(TESTBED_SH)/node.sh status

testbed-images: ## build pgwarden's instance and operator images from the tree and import them into the node
	$(TESTBED_SH)/images.sh pgwarden

testbed-selftest: ## check the node end to end (brings it up and down again if it was not up)
	$(TESTBED_SH)/selftest.sh

testbed-test: testbed-build-api ## the api level's tests (etcd + kube-apiserver)
	$(GO) test -count=1 ./e2e/testbed/...
