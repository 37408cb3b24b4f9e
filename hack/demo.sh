#!/usr/bin/env bash
# make demo: a standalone CA, a node agent and two go-spiffe workloads (a
# server and a client) talking mTLS every second while their 2-minute
# certificates rotate, and a pair of plain TLS programs (demo-files) doing
# the same every 0.5s from the agent's writeDir files, as nginx would. Any
# process of yours can join through the printed SPIFFE_ENDPOINT_SOCKET.
# DEMO_DURATION=90s stops by itself (exit 1 if a handshake failed);
# otherwise Ctrl-C stops and cleans up. DEMO_ROTATE_ROOT=1 requests a root
# rotation (`ca rotate-root`) DEMO_ROTATE_AFTER seconds (15) after the
# start, and with DEMO_DURATION prints how long each path took to trust the
# new root and to hold a leaf under it.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-bin}"
DEMO_TTL="${DEMO_TTL:-2m}"
DEMO_DURATION="${DEMO_DURATION:-}"
DEMO_ROTATE_ROOT="${DEMO_ROTATE_ROOT:-}"
DEMO_ROTATE_AFTER="${DEMO_ROTATE_AFTER:-15}"
CA_PORT="${CA_PORT:-18443}"
SERVER_PORT="${SERVER_PORT:-18444}"
AGENT_HEALTH="${AGENT_HEALTH:-127.0.0.1:19444}"
CA_HEALTH="${CA_HEALTH:-127.0.0.1:19443}"

for b in ca agent demo-server demo-client demo-files; do
  [[ -x "${BIN}/${b}" ]] || { echo "demo: ${BIN}/${b} missing; run 'make build' (make demo does)" >&2; exit 2; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mayfly-demo.XXXXXX")"
chmod 0700 "${WORK}"
PIDS=()
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "${pid}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "${pid}" 2>/dev/null || true; done
  rm -rf "${WORK}"
  exit "${code}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: timed out waiting for ${what}; logs in ${WORK}/*.log:" >&2
  tail -n 20 "${WORK}"/*.log >&2 || true
  return 1
}

UID_NOW="$(id -u)"
SERVER_BIN="$(cd "${BIN}" && pwd)/demo-server"
CLIENT_BIN="$(cd "${BIN}" && pwd)/demo-client"
FILES_BIN="$(cd "${BIN}" && pwd)/demo-files"

cat > "${WORK}/ca.yaml" <<YAML
apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: example.org
directory: ${WORK}/ca
listenAddress: 127.0.0.1:${CA_PORT}
healthAddress: ${CA_HEALTH}
rotation: {rootTTL: 720h, intermediateTTL: 2h}
workloads: {minTTL: 10s, defaultTTL: ${DEMO_TTL}, maxTTL: 1h}
agentTTL: 10m
nodes:
  - name: demo-node
    allowedIDs: ["spiffe://example.org/demo/*"]
YAML

cat > "${WORK}/registrations.yaml" <<YAML
registrations:
  - spiffeID: spiffe://example.org/demo/server
    selectors: {uid: ${UID_NOW}, path: ${SERVER_BIN}}
  - spiffeID: spiffe://example.org/demo/client
    selectors: {uid: ${UID_NOW}, path: ${CLIENT_BIN}}
  # Written to writeDir for demo-files, which reads files only.
  - spiffeID: spiffe://example.org/demo/files-server
    selectors: {uid: ${UID_NOW}, path: ${FILES_BIN}}
  - spiffeID: spiffe://example.org/demo/files-client
    selectors: {uid: ${UID_NOW}, path: ${FILES_BIN}}
  # Any other process of yours (go-spiffe, spiffe-helper, ...) gets this one.
  - spiffeID: spiffe://example.org/demo/user-${UID_NOW}
    selectors: {uid: ${UID_NOW}}
YAML

cat > "${WORK}/agent.yaml" <<YAML
apiVersion: mayfly.dev/v1alpha1
kind: AgentConfig
trustDomain: example.org
server: {address: 127.0.0.1:${CA_PORT}, trustBundleFile: ${WORK}/ca/trust-bundle.pem}
nodeName: demo-node
socketPath: ${WORK}/run/agent.sock
dataDir: ${WORK}/agent
healthAddress: ${AGENT_HEALTH}
writeDir: ${WORK}/certs
standalone: {registrationsFile: ${WORK}/registrations.yaml}
workloads: {ttl: ${DEMO_TTL}}
YAML

echo "demo: starting the CA (logs: ${WORK}/ca.log)"
"${BIN}/ca" run --config "${WORK}/ca.yaml" >"${WORK}/ca.log" 2>&1 &
PIDS+=($!)
wait_for "the CA's trust bundle" 20 test -s "${WORK}/ca/trust-bundle.pem"

TOKEN="$("${BIN}/ca" token create --config "${WORK}/ca.yaml" --node demo-node --ttl 5m)"
echo "demo: starting the agent with a single-use join token (logs: ${WORK}/agent.log)"
MAYFLY_JOIN_TOKEN="${TOKEN}" "${BIN}/agent" run --config "${WORK}/agent.yaml" >"${WORK}/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent's socket" 20 test -S "${WORK}/run/agent.sock"
export SPIFFE_ENDPOINT_SOCKET="unix://${WORK}/run/agent.sock"

cat <<MSG

  SPIFFE_ENDPOINT_SOCKET=${SPIFFE_ENDPOINT_SOCKET}

  Any process of uid ${UID_NOW} gets spiffe://example.org/demo/user-${UID_NOW} there.
  Certificates live ${DEMO_TTL} and rotate at about half-life; files in ${WORK}/certs.
  The client first fetches a JWT-SVID (audience demo-server) and has it validated.
  Status: ${BIN}/agent status --socket ${WORK}/agent/status.sock   ${BIN}/ca status --socket ${WORK}/ca/status.sock
  Metrics: http://${AGENT_HEALTH}/metrics  http://${CA_HEALTH}/metrics

MSG

"${SERVER_BIN}" --listen "127.0.0.1:${SERVER_PORT}" >"${WORK}/server.log" 2>&1 &
PIDS+=($!)
wait_for "the demo server" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/${SERVER_PORT}"
CLIENT_OUT="${WORK}/client.out"
"${CLIENT_BIN}" --server "127.0.0.1:${SERVER_PORT}" > >(tee "${CLIENT_OUT}") 2>&1 &
CLIENT_PID=$!
PIDS+=("${CLIENT_PID}")
FILES_OUT="${WORK}/files.out"
"${FILES_BIN}" --write-dir "${WORK}/certs" > >(tee "${FILES_OUT}") 2>&1 &
FILES_PID=$!
PIDS+=("${FILES_PID}")

ROTATED_AT="${WORK}/rotate-root.at"
if [[ -n "${DEMO_ROTATE_ROOT}" ]]; then
  (
    sleep "${DEMO_ROTATE_AFTER}"
    date +%s.%N >"${ROTATED_AT}"
    echo "demo: $(date +%H:%M:%S.%3N) ca rotate-root"
    "${BIN}/ca" rotate-root --config "${WORK}/ca.yaml"
  ) &
  PIDS+=($!)
fi

# rotation_summary prints, from the consumers' t= stamps, how long after
# `ca rotate-root` each path trusted the new root and held a leaf under it;
# it fails when some path did not get there.
rotation_summary() {
  local t0
  t0="$(cat "${ROTATED_AT}" 2>/dev/null || true)"
  if [[ -z "${t0}" ]]; then
    echo "demo: the root rotation was not requested (DEMO_DURATION shorter than DEMO_ROTATE_AFTER?)" >&2
    return 1
  fi
  cat "${CLIENT_OUT}" "${FILES_OUT}" | awk -v t0="${t0}" '
    match($0, /\[[a-z\/]+\]/) {
      path = substr($0, RSTART + 1, RLENGTH - 2)
      t = $NF; sub(/^t=/, "", t); t += 0
      if (match($0, /holds [0-9]+ roots/)) {
        n = substr($0, RSTART + 6, RLENGTH - 12) + 0
        paths[path] = 1
        if (t >= t0 && n >= 2 && !(path in trusted)) trusted[path] = t - t0
      }
      if ($0 ~ /leaf now under root/) {
        root = $0; sub(/.*leaf now under root /, "", root); sub(/ .*/, "", root)
        leaves[path] = 1
        # The consumers start well before the request: the first root each
        # path shows is the old one.
        if (!(path in old)) old[path] = root
        else if (t >= t0 && root != old[path] && root != "unknown" && !(path in onnew)) onnew[path] = t - t0
      }
    }
    END {
      bad = 0; maxt = 0; maxl = 0
      for (p in paths) {
        if (p in trusted) { printf "demo: %-14s trusts the new root %5.1fs after ca rotate-root\n", p, trusted[p]; if (trusted[p] > maxt) maxt = trusted[p] }
        else { printf "demo: %-14s does not trust the new root yet\n", p; bad = 1 }
      }
      for (p in leaves) {
        if (p in onnew) { printf "demo: %-14s holds a leaf under it %5.1fs after ca rotate-root\n", p, onnew[p]; if (onnew[p] > maxl) maxl = onnew[p] }
        else { printf "demo: %-14s holds no leaf under the new root yet\n", p; bad = 1 }
      }
      if (!bad) printf "demo: every path trusted the new root %.1fs after ca rotate-root; every leaf was under it %.1fs after\n", maxt, maxl
      exit bad
    }'
}

if [[ -n "${DEMO_DURATION}" ]]; then
  secs="$(go run ./hack/seconds "${DEMO_DURATION}" 2>/dev/null || echo "${DEMO_DURATION%s}")"
  sleep "${secs}"
  kill -TERM "${CLIENT_PID}" "${FILES_PID}" 2>/dev/null || true
  wait "${CLIENT_PID}" 2>/dev/null || true
  wait "${FILES_PID}" 2>/dev/null || true
  echo
  "${BIN}/ca" status --socket "${WORK}/ca/status.sock" || true
  echo
  "${BIN}/agent" status --socket "${WORK}/agent/status.sock" || true
  rotations="$(grep -c '"msg":"SVID rotated"' "${WORK}/agent.log" || true)"
  echo "demo: ${rotations} SVID rotations seen by the agent"
  code=0
  for out in "${CLIENT_OUT}" "${FILES_OUT}"; do
    summary="$(grep -E '^demo-(client|files): [0-9]+ handshakes' "${out}" || true)"
    failed="$(echo "${summary}" | sed -nE 's/.* ([0-9]+) failed/\1/p')"
    echo "demo: ${summary:-$(basename "${out}"): no summary}"
    if [[ -z "${failed}" || "${failed}" != "0" ]]; then
      echo "demo: FAILED (handshake failures: ${failed:-unknown})" >&2
      code=1
    fi
  done
  if jwt="$(grep -m1 'jwt-svid ok' "${CLIENT_OUT}")"; then
    echo "demo: ${jwt}"
  else
    echo "demo: FAILED (no JWT-SVID fetched and validated)" >&2
    code=1
  fi
  if [[ -n "${DEMO_ROTATE_ROOT}" ]] && ! rotation_summary; then
    echo "demo: FAILED (the root rotation did not reach every path within DEMO_DURATION)" >&2
    code=1
  fi
  [[ "${code}" == 0 ]] && echo "demo: OK"
  exit "${code}"
fi
wait "${CLIENT_PID}"
