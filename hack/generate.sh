#!/usr/bin/env bash
# Regenerates the Go code for every api/**/*.proto (messages and gRPC stubs).
# The generated *.pb.go files are committed, so building and CI never need
# protoc; run this only after editing a .proto file.
#
# Requirements: protoc (Debian: apt-get install protobuf-compiler) and Go.
# The protoc plugins are installed at pinned versions into the mayfly cache
# (${MAYFLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mayfly}/bin) if missing or
# at another version. The script is idempotent: running it twice without
# changes to the .proto files leaves the tree unchanged.
set -o errexit -o nounset -o pipefail

PROTOC_GEN_GO_VERSION="v1.36.12"
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"
# shellcheck source=lib/cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"
BIN="${CACHE_ROOT}/bin"

die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

# ensure_plugin NAME PACKAGE VERSION EXPECTED_VERSION_OUTPUT
# Installs PACKAGE@VERSION into ${BIN} unless ${BIN}/NAME already reports it.
ensure_plugin() {
  local name="$1" pkg="$2" version="$3" want="$4"
  local have=""
  if [[ -x "${BIN}/${name}" ]]; then
    have="$("${BIN}/${name}" --version 2>/dev/null || true)"
  fi
  if [[ "${have}" != "${want}" ]]; then
    log "installing ${pkg}@${version} into ${BIN}"
    mkdir -p "${BIN}"
    GOBIN="${BIN}" go install "${pkg}@${version}"
  fi
}

command -v go >/dev/null 2>&1 || die "go not found in PATH"
command -v protoc >/dev/null 2>&1 ||
  die "protoc not found in PATH; install it with: apt-get install protobuf-compiler"

ensure_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go \
  "${PROTOC_GEN_GO_VERSION}" "protoc-gen-go ${PROTOC_GEN_GO_VERSION}"
ensure_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  "${PROTOC_GEN_GO_GRPC_VERSION}" "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"

mapfile -t PROTOS < <(cd api && find . -name '*.proto' -type f | sed 's|^\./||' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  log "no .proto files under api/; nothing to do"
  exit 0
fi

log "protoc $(protoc --version | awk '{print $2}'): ${PROTOS[*]}"
# api/ is the import root, so a file api/foo/v1/foo.proto is imported as
# "foo/v1/foo.proto" and its code is written next to it (paths=source_relative).
protoc \
  --proto_path=api \
  --plugin=protoc-gen-go="${BIN}/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="${BIN}/protoc-gen-go-grpc" \
  --go_out=api --go_opt=paths=source_relative \
  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  "${PROTOS[@]}"

log "done"
