#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from their Go
# modules, because release binaries cannot be downloaded here. The result is
# cached outside the repository, keyed by version; the script is idempotent and
# safe to run concurrently (a lock serialises builders). On success it prints
# the directory to use as KUBEBUILDER_ASSETS on its last line of stdout.
set -o errexit -o nounset -o pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
# shellcheck source=lib/cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"
ASSETS="${CACHE_ROOT}/envtest/k8s-${KUBE_VERSION}-etcd-${ETCD_VERSION}"

# shellcheck source=lib/gomodule.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/gomodule.sh"

have_assets() {
  [[ -x "${ASSETS}/kube-apiserver" && -x "${ASSETS}/etcd" ]]
}

exit_if_built "${ASSETS}" have_assets

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

build_etcd() {
  wrapper_module envtest-etcd go.etcd.io/etcd/server/v3
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
  go mod tidy -e >&2
  go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3 >&2
  install_bin out/etcd "${ASSETS}/etcd"
}

build_apiserver() {
  wrapper_module envtest-kube k8s.io/kubernetes/cmd/kube-apiserver
  require_kubernetes
  go mod tidy -e >&2
  go build -trimpath -ldflags "$(kube_ldflags)" -o out/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver >&2
  install_bin out/kube-apiserver "${ASSETS}/kube-apiserver"
}

start=$(date +%s)
log "building etcd v${ETCD_VERSION} and kube-apiserver v${KUBE_VERSION} into ${ASSETS} (first time ~10 min)"
[[ -x "${ASSETS}/etcd" ]] || (build_etcd)
[[ -x "${ASSETS}/kube-apiserver" ]] || (build_apiserver)
have_assets || { log "build finished without both binaries"; exit 1; }
log "done in $(( $(date +%s) - start ))s"
echo "${ASSETS}"
