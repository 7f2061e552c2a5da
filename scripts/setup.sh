#!/usr/bin/env bash
# Install everything the tests and the demo need, on a fresh Debian machine with Python 3.11 and Go.
# Idempotent and cached: the venv, Debian's prometheus and the Go-built sandbox binaries are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
t_setup=$(date +%s)
step() { echo "[setup] $1 ($(( $(date +%s) - t_setup ))s)"; }

command -v go >/dev/null 2>&1 || { echo "[setup] Go is required to build the sandbox (go.dev/dl)"; exit 1; }
# The Go builds are the long, CPU-bound pole (tens of minutes cold, seconds when cached): start them
# first, in the background, with the system Python (build.py and nodebuild.py are stdlib only), so
# the network- and disk-bound steps below (apt, pip, debootstrap, wheels) run beside the compiles.
echo "[setup] Go binaries (control plane + real node; cached under ~/.cache/controlled-friction/bin)"
python3 -m controlled_friction.sandbox.nodebuild --all &
go_pid=$!
rootfs_pid=""
trap 'kill "$go_pid" $rootfs_pid 2>/dev/null || true' EXIT

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# Debian's chromium for the dashboard's browser tests (driven by playwright; never `playwright install`).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The sandbox's real node (`sandbox up --real-node`, tests marked realnode): runc, CNI plugins,
# iptables for its bridge, debootstrap for the operator image's root filesystem.
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's package starts a system Prometheus on :9090; the project runs its own, so stop that one.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi

if [ "$(id -u)" = 0 ]; then
  # The operator image's Debian root filesystem: downloads and unpacking, beside pip.
  step "Debian root filesystem for the operator image (debootstrap; cached)"
  python3 -m controlled_friction.sandbox.image --rootfs &
  rootfs_pid=$!
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
step "pip install -e .[dev]"
.venv/bin/python -m pip install -q -e '.[dev]'
step "pip done"

if [ -n "$rootfs_pid" ]; then
  wait "$rootfs_pid"
  rootfs_pid=""
  step "operator image for the real node (the wheel's venv on the root filesystem; cached)"
  .venv/bin/python -m controlled_friction.sandbox.image
  step "image done"
fi

step "waiting for the Go builds"
wait "$go_pid"
trap - EXIT
step "Go builds done"
