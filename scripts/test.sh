#!/usr/bin/env bash
# Installs everything the test suite needs (Debian mosquitto, a venv with the package and its
# test extras) and runs the whole suite. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

VENV="${HERON_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e '.[sim,test]'
export OPENBLAS_NUM_THREADS=1 PATH="$PATH:/usr/sbin"
exec "$VENV/bin/python" -m pytest -q "$@"
