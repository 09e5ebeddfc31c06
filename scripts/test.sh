#!/usr/bin/env bash
# Installs everything the test suite needs (Debian: mosquitto, openssl, and python3-venv where venv cannot
# bootstrap pip; a venv with the package and its test extras, the newest versions its requirements admit),
# runs the quality gates (ruff, mypy --strict) and the whole suite; any failure fails the script. Used by the
# README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the TLS tests make certificates with it
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=(); [ "$(id -u)" -ne 0 ] && SUDO=(sudo -n)
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

VENV="${HERON_VENV:-.venv}"
[ -x "$VENV/bin/pip" ] || python3 -m venv --clear "$VENV"  # --clear: a half-made venv is made again
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
# torch first, pinned to the CPU build this machine's index holds: an unpinned requirement would pull the CUDA
# build (gigabytes); then the package with every extra the tests use (policy bundles, the trainers).
"$VENV/bin/pip" install -q 'torch==2.13.0'
"$VENV/bin/pip" install -q -e '.[sim,test,policy,train,rllib,torchrl]'
export OPENBLAS_NUM_THREADS=1 PATH="$PATH:/usr/sbin"
echo "ruff: $("$VENV/bin/ruff" --version)"
"$VENV/bin/ruff" check heron_edge firmware_bridge sim tests benchmarks
echo "mypy --strict: $("$VENV/bin/mypy" --version)"
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -q "$@"
