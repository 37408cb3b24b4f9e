#!/usr/bin/env bash
# make demo: starts a standalone CA, an agent and two mTLS demo workloads.
# Until the CA (issue #4) and the agent (issue #5) exist it builds what there is
# and says what is missing, exiting 0 so the README's command stays runnable.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

missing=()
for b in ca agent; do
  if ! "bin/${b}" --help >/dev/null 2>&1; then
    missing+=("${b}")
  fi
done
if ((${#missing[@]} > 0)); then
  echo "mayfly demo: built bin/ca and bin/agent, but these are not implemented yet: ${missing[*]}"
  echo "  CA control plane: issue #4; node agent and Workload API: issue #5; demo workloads: issue #7."
  echo "What works today: pkg/pki (SVID issuance) and pkg/rotate (renewal); try 'make test' and 'make bench'."
  exit 0
fi
echo "mayfly demo: not wired yet (issue #7)"
