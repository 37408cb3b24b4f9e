# shellcheck shell=bash
# Sourced by the hack/ scripts that build or install tools into the mayfly
# cache (generate.sh, setup-envtest.sh, setup-node.sh): CACHE_ROOT is that
# cache, outside the repository: MAYFLY_CACHE (which the Makefile sets),
# else ${XDG_CACHE_HOME:-~/.cache}/mayfly; log writes a message to stderr
# after the script's name.
CACHE_ROOT="${MAYFLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mayfly}"
LOG_NAME="$(basename "$0" .sh)"
log() { echo "${LOG_NAME}: $*" >&2; }
