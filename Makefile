# mayfly — `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c
.DEFAULT_GOAL := help

MAYFLY_CACHE ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/mayfly
export MAYFLY_CACHE
TOOLS_BIN := $(MAYFLY_CACHE)/bin
BIN_DIR := bin

GOLANGCI_LINT_VERSION := v2.15.0
ZLINT_VERSION := v3.6.1
KUSTOMIZE_VERSION := v5.8.2
PROMTOOL_VERSION := v0.316.0
HELM_VERSION := v4.3.2
ACTIONLINT_VERSION := v1.7.12
GOLANGCI_LINT := $(TOOLS_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
ZLINT := $(TOOLS_BIN)/zlint-$(ZLINT_VERSION)
KUSTOMIZE := $(TOOLS_BIN)/kustomize-$(KUSTOMIZE_VERSION)
PROMTOOL := $(TOOLS_BIN)/promtool-$(PROMTOOL_VERSION)
HELM := $(TOOLS_BIN)/helm-$(HELM_VERSION)
ACTIONLINT := $(TOOLS_BIN)/actionlint-$(ACTIONLINT_VERSION)

FUZZTIME ?= 60s
BENCHTIME ?= 1s
GO_TEST_FLAGS ?=

##@ Main

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

demo: build ## Run the demo: a CA, an agent, mTLS workloads on the socket and on files rotating short-lived certificates (DEMO_ROTATE_ROOT=1: a root too).
	@hack/demo.sh

demo-k8s: build ## The demo with the Kubernetes backends against envtest (pods, SA tokens, ConfigMap bundle).
	@hack/demo-k8s.sh

test: lint vet test-all ## Everything CI runs: lint, vet, unit tests with -race, envtest tests, zlint.

##@ Build

build: ## Build the binaries into ./bin.
	go build -o $(BIN_DIR)/ ./cmd/...

build-pkcs11: ## Build the CA with cgo, for keys in a PKCS#11 token (dynamic binary; docs/key-custody.md).
	CGO_ENABLED=1 go build -o $(BIN_DIR)/ca-pkcs11 ./cmd/ca

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1)
IMAGE_REGISTRY ?= ghcr.io/mayfly-pki
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64
IMAGES_DIR ?= dist/images

images: ## OCI image tarballs of ca, agent, the demo workloads and a pause image (amd64+arm64, no Docker) into dist/images.
	go run ./hack/images --out $(IMAGES_DIR) --registry $(IMAGE_REGISTRY) --version $(VERSION) \
		--revision "$$(git rev-parse HEAD 2>/dev/null)" --created $(SOURCE_DATE_EPOCH) --platforms $(IMAGE_PLATFORMS)

generate: ## Regenerate api/: protobuf (needs protoc: apt-get install protobuf-compiler), deepcopy and the CRD.
	hack/generate.sh
	go generate ./api/mayfly/...

tidy: ## go mod tidy (-e: see docs/building.md on a refused module version).
	go mod tidy -e

##@ Test

test-unit: ## Unit tests with -race; envtest tests are skipped.
	go test -race $(GO_TEST_FLAGS) ./...

test-all: envtest envtest-old zlint kustomize promtool helm actionlint softhsm iptables ## Unit and envtest tests with -race, zlint over every certificate template, chart and deploy/k8s checks (lint, drift, dry-run, RBAC), alert rule tests, actionlint, lost keepalive probes (root, iptables).
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" MAYFLY_ENVTEST_OLD="$$(KUBE_VERSION=$(KUBE_OLD_VERSION) hack/setup-envtest.sh)" MAYFLY_ZLINT="$(ZLINT)" MAYFLY_KUSTOMIZE="$(KUSTOMIZE)" MAYFLY_PROMTOOL="$(PROMTOOL)" \
		MAYFLY_HELM="$(HELM)" MAYFLY_ACTIONLINT="$(ACTIONLINT)" MAYFLY_REQUIRE_SOFTHSM=1 MAYFLY_IPTABLES="$$(command -v iptables)" CGO_ENABLED=1 \
		go test -race -count=1 $(GO_TEST_FLAGS) ./...

e2e-node: kustomize helm ## A one-node cluster built from source (kubelet, containerd, runc) in its own namespaces; installs deploy/k8s and checks mayfly on it (root; docs/e2e-node.md).
	@command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] && command -v iptables >/dev/null && command -v conntrack >/dev/null || \
		apt-get install -y runc containernetworking-plugins iptables conntrack
	$(MAKE) images VERSION=e2e-node IMAGE_PLATFORMS=linux/$$(go env GOARCH) IMAGES_DIR=dist/e2e-node-images
	go test -c -o $(BIN_DIR)/e2enode.test ./internal/e2enode
	MAYFLY_E2E_NODE=1 MAYFLY_E2E_NODE_BIN="$$(hack/setup-node.sh)" MAYFLY_E2E_IMAGES="$(CURDIR)/dist/e2e-node-images" \
		MAYFLY_KUSTOMIZE="$(KUSTOMIZE)" MAYFLY_HELM="$(HELM)" bash -c 'cd internal/e2enode && ../../$(BIN_DIR)/e2enode.test -test.v -test.timeout 45m $(E2E_NODE_FLAGS)'

lint-certs: zlint ## Run zlint (RFC 5280 lints) over every certificate template kind.
	MAYFLY_ZLINT="$(ZLINT)" go test -count=1 -run '^TestZlint$$' -v ./pkg/pki/

test-rules: promtool ## promtool check and unit tests of the alert and recording rules (deploy/k8s/monitoring).
	MAYFLY_PROMTOOL="$(PROMTOOL)" go test -count=1 -run '^TestPromtool' -v ./internal/deploytest/

test-chart: helm kustomize envtest ## The Helm chart: helm lint, helm template over a matrix of values, drift of deploy/k8s, dry-run and RBAC checks against envtest.
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" MAYFLY_HELM="$(HELM)" MAYFLY_KUSTOMIZE="$(KUSTOMIZE)" \
		go test -count=1 -run '^Test(Chart|Manifests|ServerSideDryRun|RBAC|InstallTree)' -v ./internal/deploytest/

manifests: helm ## Render deploy/k8s from the Helm chart (deploy/helm/mayfly) with its defaults; make test fails on drift.
	MAYFLY_HELM="$(HELM)" MAYFLY_UPDATE_MANIFESTS=1 go test -count=1 -run '^TestManifestsUpToDate$$' ./internal/deploytest/

lint-workflows: actionlint ## actionlint over .github/workflows.
	$(ACTIONLINT) -shellcheck= -pyflakes= .github/workflows/*.yml

fuzz: ## Run every fuzz target for FUZZTIME each (default 60s).
	hack/fuzz.sh $(FUZZTIME)

bench: ## Run the benchmarks (ratios against raw crypto in the same run).
	go test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

bench-ratios: ## Issuance (raw x509, floor, crypto, gRPC direct, standard and Ed25519 signing; JWT-SVIDs vs raw ES256) and Workload API (mayfly vs bare) in alternating rounds; see docs/performance.md.
	go test -run '^$$' -bench 'BenchmarkIssuance$$' -benchtime 8192x -count 2 ./internal/app/caapp/
	go test -run '^$$' -bench 'BenchmarkFetchX509SVIDRatio$$' -benchtime 40000x -count 3 ./internal/workloadapi/

.PHONY: bench-crypto
bench-crypto: ## CPU time per operation of each cryptographic step of an issuance (CSR check, one signature per key type, raw x509 loop, mayfly's path), one process; see docs/performance.md.
	go test -run '^$$' -bench 'BenchmarkCrypto$$' -benchtime 1s -count 3 -cpu 1 ./pkg/pki/

bench-pkcs11: softhsm ## Issuance with the intermediate key in SoftHSM2 against the key in memory, side by side (ratio).
	go test -run '^$$' -bench 'BenchmarkIssuanceKeyCustody' -benchtime 2048x -count 3 ./internal/keystore/

bench-agent: build ## Agent RSS holding N=200 identities, and time to serve again after a restart.
	hack/bench/agent-rss.sh

FLEET_PODS ?= 150000
FLEET_NODES ?= 10000
FLEET_AGENTS ?= 1000,2500,5000,10000
FLEET_OUT ?= bench-fleet
FLEET_CA_MEMORY ?= 2Gi
FLEET_TIMEOUT ?= 60m
bench-fleet: ## CA (memory limit FLEET_CA_MEMORY, default 2Gi: 150,000 pods and 10,000 agents on one replica need ~1.5 GiB, the chart's 512Mi thrashes from 2,500 agents) against envtest with FLEET_PODS pods (written to etcd) and FLEET_AGENTS real agents; table, JSON, PNG in FLEET_OUT.
	mkdir -p $(FLEET_OUT) && go build -o $(FLEET_OUT)/ca ./cmd/ca
	KUBEBUILDER_ASSETS="$$(hack/setup-envtest.sh)" MAYFLY_CA_BIN="$(abspath $(FLEET_OUT))/ca" \
	MAYFLY_FLEET_PODS=$(FLEET_PODS) MAYFLY_FLEET_NODES=$(FLEET_NODES) MAYFLY_FLEET_AGENTS=$(FLEET_AGENTS) MAYFLY_FLEET_OUT="$(abspath $(FLEET_OUT))" MAYFLY_FLEET_CA_MEMORY=$(FLEET_CA_MEMORY) \
	go test -count=1 -timeout $(FLEET_TIMEOUT) -v -run '^TestFleet$$' ./internal/test/fleet/

##@ Lint

lint: golangci-lint ## golangci-lint with the repo's config.
	$(GOLANGCI_LINT) run ./...

vet: ## go vet.
	go vet ./...

##@ Tools (cached in ~/.cache/mayfly, or MAYFLY_CACHE)

envtest: ## Build kube-apiserver and etcd from source (cached; ~10 min the first time).
	@hack/setup-envtest.sh >/dev/null

KUBE_OLD_VERSION ?= 1.35.4
envtest-old: ## Build kube-apiserver 1.35.4 (KUBE_OLD_VERSION), the older API server the CA is tested against (cached).
	@KUBE_VERSION=$(KUBE_OLD_VERSION) hack/setup-envtest.sh >/dev/null

golangci-lint: $(GOLANGCI_LINT) ## Install golangci-lint (pinned).
$(GOLANGCI_LINT):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS_BIN)/golangci-lint $@

softhsm: ## Install SoftHSM2 (Debian softhsm2) for the PKCS#11 tests, unless it is there.
	@command -v softhsm2-util >/dev/null && { [ -e /usr/lib/softhsm/libsofthsm2.so ] || ls /usr/lib/*/softhsm/libsofthsm2.so >/dev/null 2>&1; } || \
		apt-get install -y softhsm2

iptables: ## Install iptables (Debian iptables) for the keepalive test in a network namespace of its own, unless it is there.
	@command -v iptables >/dev/null || apt-get install -y iptables

zlint: $(ZLINT) ## Install zlint (pinned).
$(ZLINT):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install github.com/zmap/zlint/v3/cmd/zlint@$(ZLINT_VERSION)
	mv $(TOOLS_BIN)/zlint $@

kustomize: $(KUSTOMIZE) ## Install kustomize (pinned).
$(KUSTOMIZE):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	mv $(TOOLS_BIN)/kustomize $@

promtool: $(PROMTOOL) ## Install promtool (pinned; Prometheus v3 modules are tagged v0.3xx).
$(PROMTOOL):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(TOOLS_BIN)/promtool $@

helm: $(HELM) ## Install helm (pinned, Helm v4, built from helm.sh/helm/v4).
$(HELM):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS_BIN)/helm $@

actionlint: $(ACTIONLINT) ## Install actionlint (pinned).
$(ACTIONLINT):
	mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	mv $(TOOLS_BIN)/actionlint $@

clean: ## Remove ./bin (the tool cache stays).
	rm -rf $(BIN_DIR)

.PHONY: iptables envtest-old e2e-node images help demo demo-k8s kustomize helm actionlint manifests test-chart lint-workflows test build bench-agent bench-fleet generate tidy test-unit test-all lint-certs test-rules fuzz bench bench-ratios lint vet envtest golangci-lint zlint promtool clean softhsm build-pkcs11 bench-pkcs11
