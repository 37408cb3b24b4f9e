#!/usr/bin/env bash
# make demo-k8s: `make demo` with the Kubernetes backends. An envtest API
# server (kube-apiserver + etcd, no kubelet), the CA and a node agent in
# Kubernetes mode, and bin/demo-server and bin/demo-client playing the
# containers of pods demo/server-1 and demo/client-1 (SPIFFE IDs from their
# ServiceAccounts). DEMO_TTL (default 2m) sets the certificate lifetime;
# DEMO_DURATION=90s stops by itself (exit 1 if a handshake failed); otherwise
# Ctrl-C stops and cleans up. See hack/demok8s/main.go.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-bin}"
for b in ca agent demo-server demo-client; do
  [[ -x "${BIN}/${b}" ]] || { echo "demo-k8s: ${BIN}/${b} missing; run 'make build' (make demo-k8s does)" >&2; exit 2; }
done

KUBE_ASSETS_DIR="${MAYFLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mayfly}/envtest"
if ! compgen -G "${KUBE_ASSETS_DIR}/k8s-*/kube-apiserver" >/dev/null; then
  echo "demo-k8s: building the envtest control plane (kube-apiserver, etcd) from source first; ~10 min the first time, cached afterwards" >&2
fi
KUBEBUILDER_ASSETS="$(hack/setup-envtest.sh | tail -n 1)"
export KUBEBUILDER_ASSETS

go build -o "${BIN}/demo-k8s" ./hack/demok8s
exec "${BIN}/demo-k8s" --bin "${BIN}" \
  --ttl "${DEMO_TTL:-2m}" \
  --duration "${DEMO_DURATION:-}" \
  --server "${SERVER_ADDRESS:-127.0.0.1:18544}" \
  --ca-health "${CA_HEALTH:-127.0.0.1:19543}" \
  --agent-health "${AGENT_HEALTH:-127.0.0.1:19544}"
