"""Build the real node's Go binaries (kubelet, containerd 2.x, its runc shim, ctr, a pause program).

They land in their own directory under ``~/.cache/controlled-friction/bin``, so the control plane's
cache key is untouched. The kubelet is built from the same pinned ``k8s.io/kubernetes`` wrapper
module as the control plane, in the same `go build` when both are missing (`ensure_all`, what
`scripts/setup.sh` runs), so it reports the same version and shares compiled packages.

Why these versions: kubelet v1.36 no longer supports containerd 1.x (Debian 12 ships 1.6), so
containerd comes from the Go module proxy; the 2.2 line still supports the host's cgroup v1
(deprecated there, maintained upstream until 2029). runc and the CNI plugins are Debian's packages.

Stdlib only, like `build.py`, so `scripts/setup.sh` can run it before the venv has dependencies.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
import time
from collections.abc import Callable
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

# Plugins the node never loads (its snapshotter is overlayfs; btrfs needs cgo, which is off anyway).
CONTAINERD_TAGS = ("no_devmapper", "no_zfs", "no_tracing")

BINARIES = ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause")


def bin_dir() -> Path:
    # The tags change the containerd binary, so they are part of the key.
    without = "-".join(t.removeprefix("no_") for t in CONTAINERD_TAGS)
    key = f"node-k8s-{KUBERNETES_VERSION}_containerd-{CONTAINERD_VERSION}-without-{without}_pause-{PAUSE_VERSION}"
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
        tags=CONTAINERD_TAGS,
    )


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


def _kubernetes_dests(with_control_plane: bool) -> dict[str, Path]:
    dests = {"k8s.io/kubernetes/cmd/kubelet": binary("kubelet")}
    if with_control_plane:
        dests |= {f"k8s.io/kubernetes/cmd/{c}": build.binary(c) for c in build.K8S_COMMANDS}
    return dests


def _build_kubernetes(with_control_plane: bool) -> None:
    dests = _kubernetes_dests(with_control_plane)
    if all(d.exists() for d in dests.values()):
        return
    work = cache_root() / "gowork"
    work.mkdir(parents=True, exist_ok=True)
    commands = tuple(pkg.rsplit("/", 1)[-1] for pkg in dests)
    build.build_target(build._kubernetes_target(work, commands), dests)


def ensure_built(only: list[str] | None = None) -> Path:
    """Build whatever is missing (idempotent, cached per version); return the bin directory."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the real node (https://go.dev/dl); not found on PATH")
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    if not only or "pause" in only:
        _build_pause(out)
    if not only or "containerd" in only:
        target = _containerd_target()
        build.build_target(target, {pkg: out / name for pkg, name in build.output_names(target).items()})
    if not only or "kubelet" in only:
        _build_kubernetes(with_control_plane=False)
    return out


def ensure_all() -> None:
    """Every Go binary CI needs (control plane and real node), in two concurrent lanes.

    A `go build` leaves a core idle while it loads packages, waits for the module proxy or links
    alone; a second build beside it fills those gaps. Lane one is every Kubernetes command in one
    `go build` (kubelet included, so shared packages compile once); lane two is the other modules.
    """
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the sandbox (https://go.dev/dl); not found on PATH")
    build.bin_dir().mkdir(parents=True, exist_ok=True)
    bin_dir().mkdir(parents=True, exist_ok=True)

    def others() -> None:
        ensure_built(["containerd", "pause"])  # the longest of lane two first
        for target in build.other_targets():
            build.build_target(target, {pkg: build.bin_dir() / name
                                        for pkg, name in build.output_names(target).items()})

    def timed(name: str, lane: Callable[[], None]) -> None:
        t0 = time.monotonic()
        lane()
        _log(f"lane {name} done in {time.monotonic() - t0:.0f}s")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        lanes = [pool.submit(timed, "kubernetes", lambda: _build_kubernetes(True)),
                 pool.submit(timed, "containerd/pause/etcd/kwok/helm", others)]
        for lane in lanes:
            lane.result()


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
    if sys.argv[1:] == ["--all"]:
        ensure_all()
        _log(f"control-plane and real-node binaries built ({time.monotonic() - t0:.0f}s)")
    else:
        where = ensure_built(sys.argv[1:] or None)
        _log(f"real-node binaries in {where} ({time.monotonic() - t0:.0f}s)")
