#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each (default 60s).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${1:-60s}"
status=0
while IFS=: read -r file name; do
  pkg="./$(dirname "${file}")"
  echo "== ${pkg} ${name} (${FUZZTIME})"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "${FUZZTIME}" "${pkg}"; then
    status=1
  fi
done < <(grep -rHoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9_]+)' --exclude-dir=.git . |
  sed -E 's#^\./##; s#:func #:#' | sort -u)
exit "${status}"
