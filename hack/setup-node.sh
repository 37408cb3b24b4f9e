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
CACHE_ROOT="${MAYFLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mayfly}"
NODE="${CACHE_ROOT}/node/k8s-${KUBE_VERSION}-containerd-${CONTAINERD_VERSION}"
# CoreDNS has its own directory: it serves the node's cluster DNS
# (pods resolve mayfly-ca.mayfly-system.svc) and changes independently.
COREDNS_DIR="${CACHE_ROOT}/node/coredns-${COREDNS_VERSION}"
HERE="$(cd "$(dirname "$0")" && pwd)"

KUBE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
CONTAINERD_BINS=(containerd ctr containerd-shim-runc-v2)

log() { echo "setup-node: $*" >&2; }

have_all() {
  local b
  for b in "${KUBE_BINS[@]}" "${CONTAINERD_BINS[@]}" kube-apiserver etcd coredns; do
    [[ -x "${NODE}/${b}" ]] || return 1
  done
}

if have_all; then
  echo "${NODE}"
  exit 0
fi

mkdir -p "${NODE}"
exec 9>"${NODE}.lock"
log "waiting for the build lock ${NODE}.lock"
flock 9
if have_all; then
  echo "${NODE}"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# install moves a built binary into the cache atomically.
install_bin() {
  mv "$1" "${NODE}/$2.tmp" && mv "${NODE}/$2.tmp" "${NODE}/$2"
}

build_kube() {
  local dir="${WORK}/kube"
  mkdir -p "${dir}/out"
  cd "${dir}"
  go mod init mayfly.local/node-kube >/dev/null 2>&1
  local modfile
  modfile="$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  if [[ -z "${modfile}" || ! -f "${modfile}" ]]; then
    log "could not download k8s.io/kubernetes@v${KUBE_VERSION}"
    return 1
  fi
  local staging_version="v0.${KUBE_VERSION#1.}"
  {
    echo "require k8s.io/kubernetes v${KUBE_VERSION}"
    sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/.*#\1#p' "${modfile}" |
      while read -r mod; do
        echo "replace ${mod} => ${mod} ${staging_version}"
      done
  } >> go.mod
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    local b
    for b in "${KUBE_BINS[@]}"; do echo "import _ \"k8s.io/kubernetes/cmd/${b}\""; done
  } > tools.go
  go mod tidy -e >&2
  local major="${KUBE_VERSION%%.*}" minor b
  minor="$(echo "${KUBE_VERSION}" | cut -d. -f2)"
  for b in "${KUBE_BINS[@]}"; do
    [[ -x "${NODE}/${b}" ]] && continue
    log "building ${b} v${KUBE_VERSION}"
    go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION} \
      -X k8s.io/component-base/version.gitMajor=${major} \
      -X k8s.io/component-base/version.gitMinor=${minor}" \
      -o "${dir}/out/${b}" "k8s.io/kubernetes/cmd/${b}" >&2
    install_bin "${dir}/out/${b}" "${b}"
  done
}

build_containerd() {
  local dir="${WORK}/containerd"
  mkdir -p "${dir}/out"
  cd "${dir}"
  go mod init mayfly.local/node-containerd >/dev/null 2>&1
  cat > tools.go <<GO
//go:build tools

package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
GO
  go get "github.com/containerd/containerd/v2@v${CONTAINERD_VERSION}" >&2
  go mod tidy -e >&2
  # No btrfs (needs its C headers) and no cgo: static binaries.
  local tags="no_btrfs no_devmapper no_zfs no_aufs" b
  for b in "${CONTAINERD_BINS[@]}"; do
    [[ -x "${NODE}/${b}" ]] && continue
    log "building ${b} v${CONTAINERD_VERSION}"
    CGO_ENABLED=0 go build -trimpath -tags "${tags}" -ldflags "-s -w \
      -X github.com/containerd/containerd/v2/version.Version=v${CONTAINERD_VERSION}" \
      -o "${dir}/out/${b}" "github.com/containerd/containerd/v2/cmd/${b}" >&2
    install_bin "${dir}/out/${b}" "${b}"
  done
}

build_coredns() {
  mkdir -p "${COREDNS_DIR}"
  if [[ ! -x "${COREDNS_DIR}/coredns" ]]; then
    local dir="${WORK}/coredns"
    mkdir -p "${dir}"
    cd "${dir}"
    go mod init mayfly.local/node-coredns >/dev/null 2>&1
    cat > tools.go <<GO
//go:build tools

package tools

import _ "github.com/coredns/coredns"
GO
    go get "github.com/coredns/coredns@v${COREDNS_VERSION}" >&2
    go mod tidy -e >&2
    log "building coredns v${COREDNS_VERSION}"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${dir}/coredns" github.com/coredns/coredns >&2
    mv "${dir}/coredns" "${COREDNS_DIR}/coredns.tmp" && mv "${COREDNS_DIR}/coredns.tmp" "${COREDNS_DIR}/coredns"
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
