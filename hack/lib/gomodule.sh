# shellcheck shell=bash
# Sourced by hack/setup-envtest.sh and hack/setup-node.sh: builds programs
# from their Go modules (release binaries cannot be downloaded here) through
# a throwaway wrapper module that imports them. The caller sets WORK (a
# scratch directory) and sources lib/cache.sh (log).

# wrapper_module NAME PACKAGE...: makes ${WORK}/NAME the module
# mayfly.local/NAME, whose tools.go imports each PACKAGE, and changes into
# it. Call it in the subshell of one build: it changes directory.
wrapper_module() {
  local name="$1" pkg
  shift
  mkdir -p "${WORK}/${name}/out"
  cd "${WORK}/${name}"
  go mod init "mayfly.local/${name}" >/dev/null 2>&1
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    for pkg in "$@"; do echo "import _ \"${pkg}\""; done
  } > tools.go
}

# require_kubernetes: adds k8s.io/kubernetes v${KUBE_VERSION} to the module
# in the current directory. kubernetes replaces its staging modules with
# ./staging paths that a module download does not carry: each one is pointed
# at its published v0 version.
require_kubernetes() {
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
}

# kube_ldflags prints the -ldflags of a kubernetes binary: stripped, and
# reporting v${KUBE_VERSION} (its version checks read these variables).
kube_ldflags() {
  local major="${KUBE_VERSION%%.*}" minor
  minor="$(echo "${KUBE_VERSION}" | cut -d. -f2)"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION}" \
    "-X k8s.io/component-base/version.gitMajor=${major}" \
    "-X k8s.io/component-base/version.gitMinor=${minor}"
}

# install_bin SRC DEST moves a built binary into the cache atomically: a
# concurrent reader sees the old file or the whole new one.
install_bin() {
  mv "$1" "$2.tmp" && mv "$2.tmp" "$2"
}

# exit_if_built DIR HAVE...: when the command HAVE... says that DIR holds
# every binary, prints DIR and exits; otherwise takes DIR's build lock
# (waiting while another builder holds it) and checks again, since that
# builder may have finished meanwhile. The lock is held until the script
# exits.
exit_if_built() {
  local dir="$1"
  shift
  if "$@"; then
    echo "${dir}"
    exit 0
  fi
  mkdir -p "${dir}"
  exec 9>"${dir}.lock"
  log "waiting for the build lock ${dir}.lock"
  flock 9
  if "$@"; then
    echo "${dir}"
    exit 0
  fi
}
