#!/usr/bin/env bash
# Builds the binaries of a one-node Kubernetes cluster from their Go modules
# (release binaries cannot be downloaded here): kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy from k8s.io/kubernetes (the same wrapper-module
# build as hack/setup-envtest.sh, so they share its build cache), and containerd
# 2.x (containerd, ctr, containerd-shim-runc-v2) from
# github.com/containerd/containerd/v2, and CoreDNS (cluster DNS) from
# github.com/coredns/coredns. kube-apiserver and etcd come from
# hack/setup-envtest.sh and are linked in. runc and the CNI plugins come from
# Debian (apt-get install runc containernetworking-plugins iptables conntrack).
#
# The result is cached outside the repository, keyed by versions; the script is
# idempotent and safe to run concurrently (a lock serialises builders). On
# success it prints the directory holding every binary on its last line of
# stdout.
set -o errexit -o nounset -o pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.2.9}"
COREDNS_VERSION="${COREDNS_VERSION:-1.15.0}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/cache.sh
source "${HERE}/lib/cache.sh"
NODE="${CACHE_ROOT}/node/k8s-${KUBE_VERSION}-containerd-${CONTAINERD_VERSION}"
# CoreDNS has its own directory: it serves the node's cluster DNS
# (pods resolve mayfly-ca.mayfly-system.svc) and changes independently.
COREDNS_DIR="${CACHE_ROOT}/node/coredns-${COREDNS_VERSION}"

KUBE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
CONTAINERD_BINS=(containerd ctr containerd-shim-runc-v2)

# shellcheck source=lib/gomodule.sh
source "${HERE}/lib/gomodule.sh"

have_all() {
  local b
  for b in "${KUBE_BINS[@]}" "${CONTAINERD_BINS[@]}" kube-apiserver etcd coredns; do
    [[ -x "${NODE}/${b}" ]] || return 1
  done
}

exit_if_built "${NODE}" have_all

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

build_kube() {
  local b pkgs=()
  for b in "${KUBE_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  wrapper_module node-kube "${pkgs[@]}"
  require_kubernetes
  go mod tidy -e >&2
  for b in "${KUBE_BINS[@]}"; do
    [[ -x "${NODE}/${b}" ]] && continue
    log "building ${b} v${KUBE_VERSION}"
    go build -trimpath -ldflags "$(kube_ldflags)" -o "out/${b}" "k8s.io/kubernetes/cmd/${b}" >&2
    install_bin "out/${b}" "${NODE}/${b}"
  done
}

build_containerd() {
  local b pkgs=()
  for b in "${CONTAINERD_BINS[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/${b}"); done
  wrapper_module node-containerd "${pkgs[@]}"
  go get "github.com/containerd/containerd/v2@v${CONTAINERD_VERSION}" >&2
  go mod tidy -e >&2
  # No btrfs (needs its C headers) and no cgo: static binaries.
  local tags="no_btrfs no_devmapper no_zfs no_aufs"
  for b in "${CONTAINERD_BINS[@]}"; do
    [[ -x "${NODE}/${b}" ]] && continue
    log "building ${b} v${CONTAINERD_VERSION}"
    CGO_ENABLED=0 go build -trimpath -tags "${tags}" -ldflags "-s -w \
      -X github.com/containerd/containerd/v2/version.Version=v${CONTAINERD_VERSION}" \
      -o "out/${b}" "github.com/containerd/containerd/v2/cmd/${b}" >&2
    install_bin "out/${b}" "${NODE}/${b}"
  done
}

build_coredns() {
  mkdir -p "${COREDNS_DIR}"
  if [[ ! -x "${COREDNS_DIR}/coredns" ]]; then
    wrapper_module node-coredns github.com/coredns/coredns
    go get "github.com/coredns/coredns@v${COREDNS_VERSION}" >&2
    go mod tidy -e >&2
    log "building coredns v${COREDNS_VERSION}"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o out/coredns github.com/coredns/coredns >&2
    install_bin out/coredns "${COREDNS_DIR}/coredns"
  fi
  ln -sf "${COREDNS_DIR}/coredns" "${NODE}/coredns"
}

link_envtest() {
  local assets
  assets="$(KUBE_VERSION="${KUBE_VERSION}" "${HERE}/setup-envtest.sh" | tail -n 1)"
  ln -sf "${assets}/kube-apiserver" "${NODE}/kube-apiserver"
  ln -sf "${assets}/etcd" "${NODE}/etcd"
}

start=$(date +%s)
log "building kubernetes v${KUBE_VERSION} node binaries, containerd v${CONTAINERD_VERSION} and coredns v${COREDNS_VERSION} into ${NODE}"
link_envtest
missing() {
  local b
  for b in "$@"; do [[ -x "${NODE}/${b}" ]] || return 0; done
  return 1
}
if missing "${KUBE_BINS[@]}"; then (build_kube); fi
if missing "${CONTAINERD_BINS[@]}"; then (build_containerd); fi
(build_coredns)
have_all || { log "build finished without every binary"; exit 1; }
log "done in $(( $(date +%s) - start ))s"
echo "${NODE}"
