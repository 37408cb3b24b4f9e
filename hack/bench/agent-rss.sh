#!/usr/bin/env bash
# Measures the agent binary's resident memory while it holds N workload
# identities (default 200), and how long a restarted agent takes to serve
# again. Uses the standalone CA and agent binaries in ./bin (make build).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/../.."
N="${N:-200}"
BIN=bin
WORK="$(mktemp -d)"
chmod 0700 "${WORK}"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "${WORK}"' EXIT

cat > "${WORK}/ca.yaml" <<YAML
trustDomain: example.org
directory: ${WORK}/ca
listenAddress: 127.0.0.1:28443
healthAddress: "off"
workloads: {defaultTTL: 1h, nodeRateLimit: 10000}
nodes: [{name: bench, allowedIDs: ["spiffe://example.org/w/*"]}]
YAML
"${BIN}/ca" run --config "${WORK}/ca.yaml" >"${WORK}/ca.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "${WORK}/ca/trust-bundle.pem" ]] && break; sleep 0.1; done

{
  echo "registrations:"
  for i in $(seq "${N}"); do
    echo "  - {spiffeID: spiffe://example.org/w/${i}, selectors: {uid: $((100000 + i))}}"
  done
} > "${WORK}/regs.yaml"
cat > "${WORK}/agent.yaml" <<YAML
trustDomain: example.org
server: {address: 127.0.0.1:28443, trustBundleFile: ${WORK}/ca/trust-bundle.pem}
nodeName: bench
socketPath: ${WORK}/agent.sock
dataDir: ${WORK}/agent
healthAddress: 127.0.0.1:29444
standalone: {registrationsFile: ${WORK}/regs.yaml}
YAML
start_agent() {
  MAYFLY_JOIN_TOKEN="${1:-}" "${BIN}/agent" run --config "${WORK}/agent.yaml" >>"${WORK}/agent.log" 2>&1 &
  AGENT=$!
  PIDS+=("${AGENT}")
}
held() { curl -fsS --unix-socket "${WORK}/agent/status.sock" "http://agent/status" 2>/dev/null | grep -o '"Rotations":[1-9]' | wc -l; }

TOKEN="$("${BIN}/ca" token create --config "${WORK}/ca.yaml" --node bench)"
t0=$(date +%s.%N)
start_agent "${TOKEN}"
until [[ "$(held)" -ge "${N}" ]]; do sleep 0.1; done
t1=$(date +%s.%N)
sleep 2
rss=$(awk '/VmRSS/ {print $2}' "/proc/${AGENT}/status")
echo "agent: ${N} identities obtained in $(echo "${t1} - ${t0}" | bc) s; RSS $((rss / 1024)) MiB (${rss} kB)"

kill "${AGENT}"; wait "${AGENT}" 2>/dev/null || true
t2=$(date +%s.%N)
start_agent ""   # restart: no join token; the persisted agent SVID is renewed
until [[ -S "${WORK}/agent.sock" && "$(held)" -ge "${N}" ]]; do sleep 0.05; done
t3=$(date +%s.%N)
echo "restart: serving all ${N} identities again after $(echo "${t3} - ${t2}" | bc) s"
