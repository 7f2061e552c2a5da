"""Build the real node's Go binaries (kubelet, containerd 2.x, its runc shim, ctr, a pause program).

Kept apart from `build.py` so the control-plane cache key (and its 13-minute build) is untouched:
these land in their own directory under ``~/.cache/controlled-friction/bin``. The kubelet is built
from the same pinned ``k8s.io/kubernetes`` wrapper module as the control plane, so it shares the Go
build cache with it and reports the same version.

Why these versions: kubelet v1.36 no longer supports containerd 1.x (Debian 12 ships 1.6), so
containerd comes from the Go module proxy; the 2.2 line still supports the host's cgroup v1
(deprecated there, maintained upstream until 2029). runc and the CNI plugins are Debian's packages.

Stdlib only, like `build.py`, so `scripts/setup.sh` can run it before the venv has dependencies.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

from controlled_friction.sandbox import build
from controlled_friction.sandbox.build import KUBERNETES_VERSION, GoTarget, cache_root

CONTAINERD_VERSION = "v2.2.9"
PAUSE_VERSION = "1"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"

# The pause container: holds the pod's namespaces, reaps zombies, exits on SIGINT/SIGTERM.
PAUSE_SOURCE = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsigs := make(chan os.Signal, 4)
\tsignal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range sigs {
\t\tif s == syscall.SIGCHLD {
\t\t\tfor {
\t\t\t\tvar st syscall.WaitStatus
\t\t\t\tpid, err := syscall.Wait4(-1, &st, syscall.WNOHANG, nil)
\t\t\t\tif pid <= 0 || err != nil {
\t\t\t\t\tbreak
\t\t\t\t}
\t\t\t}
\t\t\tcontinue
\t\t}
\t\tos.Exit(0)
\t}
}
"""

BINARIES = ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause")


def bin_dir() -> Path:
    key = f"node-k8s-{KUBERNETES_VERSION}_containerd-{CONTAINERD_VERSION}_pause-{PAUSE_VERSION}"
    return cache_root() / "bin" / key


def binary(name: str) -> Path:
    return bin_dir() / name


def _log(msg: str) -> None:
    print(f"[node build] {msg}", file=sys.stderr, flush=True)


def _containerd_target() -> GoTarget:
    pkg = f"{CONTAINERD_MODULE}/cmd"
    version_pkg = f"{CONTAINERD_MODULE}/version"
    return GoTarget(
        module=CONTAINERD_MODULE,
        version=CONTAINERD_VERSION,
        packages=(f"{pkg}/containerd", f"{pkg}/containerd-shim-runc-v2", f"{pkg}/ctr"),
        ldflags=f"-s -w -X {version_pkg}.Version={CONTAINERD_VERSION} -X {version_pkg}.Revision=cf-sandbox",
    )


def _kubelet_target() -> GoTarget:
    work = cache_root() / "gowork"
    work.mkdir(parents=True, exist_ok=True)
    k8s = build._kubernetes_target(work)
    return dataclasses.replace(k8s, packages=("k8s.io/kubernetes/cmd/kubelet",))


def _build_pause(out: Path) -> None:
    if (out / "pause").exists():
        return
    work = cache_root() / "gowork" / "cf-pause" / PAUSE_VERSION
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text("module cfsandbox/pause\n\ngo 1.22\n")
    (work / "main.go").write_text(PAUSE_SOURCE)
    tmp = out / ".pause.tmp"
    build._go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], work)
    tmp.rename(out / "pause")


def ensure_built(only: list[str] | None = None) -> Path:
    """Build whatever is missing (idempotent, cached per version); return the bin directory."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the real node (https://go.dev/dl); not found on PATH")
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    if not only or "pause" in only:
        _build_pause(out)
    if not only or "containerd" in only:
        build.build_target(_containerd_target(), out)
    if (not only or "kubelet" in only) and not (out / "kubelet").exists():
        build.build_target(_kubelet_target(), out)
    return out


def missing() -> list[str]:
    return [n for n in BINARIES if not binary(n).exists()]


def runc_path() -> Path:
    """Debian's runc (`apt-get install runc`)."""
    found = shutil.which("runc") or "/usr/bin/runc"
    return Path(found)


def host_tools_missing() -> list[str]:
    """Debian packages the real node needs on the host, by the file each one provides."""
    need = {
        "runc": "/usr/sbin/runc",
        "containernetworking-plugins": "/usr/lib/cni/bridge",
        "iptables": "/usr/sbin/iptables",
        "debootstrap": "/usr/sbin/debootstrap",
        "mount": "/usr/bin/mount",
    }
    return [pkg for pkg, path in need.items() if not (os.path.exists(path) or shutil.which(Path(path).name))]


if __name__ == "__main__":
    t0 = time.monotonic()
    where = ensure_built(sys.argv[1:] or None)
    _log(f"real-node binaries in {where} ({time.monotonic() - t0:.0f}s)")
