#!/usr/bin/env bash
# Install everything the tests and the demo need, on a fresh Debian machine with Python 3.11 and Go.
# Idempotent and cached: the venv, Debian's prometheus and the Go-built sandbox binaries are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# Debian's chromium for the dashboard's browser tests (driven by playwright; never `playwright install`).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's package starts a system Prometheus on :9090; the project runs its own, so stop that one.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi

command -v go >/dev/null 2>&1 || { echo "[setup] Go is required to build the sandbox (go.dev/dl)"; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] pip install -e .[dev]"
.venv/bin/python -m pip install -q -e '.[dev]'

echo "[setup] sandbox binaries (built once from the Go module proxy, cached under ~/.cache/controlled-friction)"
.venv/bin/python -m controlled_friction.sandbox.build
