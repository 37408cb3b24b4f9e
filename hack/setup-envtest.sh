#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from their Go
# modules, because release binaries cannot be downloaded here. The result is
# cached outside the repository, keyed by version; the script is idempotent and
# safe to run concurrently (a lock serialises builders). On success it prints
# the directory to use as KUBEBUILDER_ASSETS on its last line of stdout.
set -o errexit -o nounset -o pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
CACHE_ROOT="${MAYFLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mayfly}"
ASSETS="${CACHE_ROOT}/envtest/k8s-${KUBE_VERSION}-etcd-${ETCD_VERSION}"

log() { echo "setup-envtest: $*" >&2; }

have_assets() {
  [[ -x "${ASSETS}/kube-apiserver" && -x "${ASSETS}/etcd" ]]
}

if have_assets; then
  echo "${ASSETS}"
  exit 0
fi

mkdir -p "${ASSETS}"
exec 9>"${ASSETS}.lock"
log "waiting for the build lock ${ASSETS}.lock"
flock 9
# Another builder may have finished while we waited.
if have_assets; then
  echo "${ASSETS}"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

build_etcd() {
  local dir="${WORK}/etcd"
  mkdir -p "${dir}"
  cd "${dir}"
  go mod init mayfly.local/envtest-etcd >/dev/null 2>&1
  cat > tools.go <<GO
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
  go mod tidy -e >&2
  go build -trimpath -ldflags "-s -w" -o "${dir}/etcd" go.etcd.io/etcd/server/v3 >&2
  mv "${dir}/etcd" "${ASSETS}/etcd.tmp" && mv "${ASSETS}/etcd.tmp" "${ASSETS}/etcd"
}

build_apiserver() {
  local dir="${WORK}/kube"
  mkdir -p "${dir}"
  cd "${dir}"
  go mod init mayfly.local/envtest-kube >/dev/null 2>&1
  local modfile
  modfile="$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  if [[ -z "${modfile}" || ! -f "${modfile}" ]]; then
    log "could not download k8s.io/kubernetes@v${KUBE_VERSION}"
    return 1
  fi
  # kubernetes replaces its staging modules with ./staging paths that a module
  # download does not carry: point each one at its published v0 version.
  local staging_version="v0.${KUBE_VERSION#1.}"
  {
    echo "require k8s.io/kubernetes v${KUBE_VERSION}"
    sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/.*#\1#p' "${modfile}" |
      while read -r mod; do
        echo "replace ${mod} => ${mod} ${staging_version}"
      done
  } >> go.mod
  cat > tools.go <<GO
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy -e >&2
  local major="${KUBE_VERSION%%.*}" minor
  minor="$(echo "${KUBE_VERSION}" | cut -d. -f2)"
  go build -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION} \
    -X k8s.io/component-base/version.gitMajor=${major} \
    -X k8s.io/component-base/version.gitMinor=${minor}" \
    -o "${dir}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
  mv "${dir}/kube-apiserver" "${ASSETS}/kube-apiserver.tmp" && mv "${ASSETS}/kube-apiserver.tmp" "${ASSETS}/kube-apiserver"
}

start=$(date +%s)
log "building etcd v${ETCD_VERSION} and kube-apiserver v${KUBE_VERSION} into ${ASSETS} (first time ~10 min)"
[[ -x "${ASSETS}/etcd" ]] || (build_etcd)
[[ -x "${ASSETS}/kube-apiserver" ]] || (build_apiserver)
have_assets || { log "build finished without both binaries"; exit 1; }
log "done in $(( $(date +%s) - start ))s"
echo "${ASSETS}"
