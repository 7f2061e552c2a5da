"""Build the sandbox's Go binaries from the Go module proxy, once, into a per-version cache.

Kubernetes is not meant to be consumed as a module: its go.mod replaces every ``k8s.io/*`` staging
module with a path inside its own tree, and replaces are ignored in dependencies. We therefore
generate a tiny wrapper module that requires ``k8s.io/kubernetes`` and replaces each staging module
with its published ``v0.X.Y`` twin; the list is read from the pinned go.mod, never hand-copied.

Stdlib only, so it can run before the project's Python dependencies are installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"

K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "controlled-friction"


def bin_dir() -> Path:
    key = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"
    return cache_root() / "bin" / key


def binary(name: str) -> Path:
    return bin_dir() / name


def _log(msg: str) -> None:
    print(f"[sandbox build] {msg}", file=sys.stderr, flush=True)


def _go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", **(env or {})}
    proc = subprocess.run(
        ["go", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def staging_replaces(kubernetes_gomod: str, version: str) -> list[str]:
    """Map each ``k8s.io/x => ./staging/...`` replace of kubernetes' go.mod to ``k8s.io/x v0.N.P``."""
    staging_version = "v0." + version.removeprefix("v1.")
    mods = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", kubernetes_gomod, re.MULTILINE)
    if not mods:
        raise RuntimeError("no staging replaces found in kubernetes go.mod; layout changed?")
    return [f"{m} => {m} {staging_version}" for m in sorted(set(mods))]


@dataclass(frozen=True)
class GoTarget:
    module: str
    version: str
    packages: tuple[str, ...]
    ldflags: str = "-s -w"
    extra_gomod: str = ""


def _kubernetes_target(work: Path) -> GoTarget:
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], work))
    gomod = Path(info["GoMod"]).read_text()
    replaces = staging_replaces(gomod, KUBERNETES_VERSION)
    major, minor = KUBERNETES_VERSION.removeprefix("v").split(".")[:2]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    xs = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        xs += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={stamp}",
        ]
    return GoTarget(
        module="k8s.io/kubernetes",
        version=KUBERNETES_VERSION,
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS),
        ldflags="-s -w " + " ".join(xs),
        extra_gomod="replace (\n\t" + "\n\t".join(replaces) + "\n)\n",
    )


def _targets(work: Path) -> list[GoTarget]:
    return [
        GoTarget("go.etcd.io/etcd/server/v3", ETCD_VERSION, ("go.etcd.io/etcd/server/v3",)),
        GoTarget("sigs.k8s.io/kwok", KWOK_VERSION, ("sigs.k8s.io/kwok/cmd/kwok",)),
        GoTarget("helm.sh/helm/v3", HELM_VERSION, ("helm.sh/helm/v3/cmd/helm",),
                 ldflags=f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
        _kubernetes_target(work),
    ]


def _output_names(target: GoTarget) -> dict[str, str]:
    names = {}
    for pkg in target.packages:
        name = pkg.rsplit("/", 1)[-1]
        names[pkg] = "etcd" if target.module.startswith("go.etcd.io") else name
    return names


def build_target(target: GoTarget, out: Path) -> None:
    names = _output_names(target)
    if all((out / n).exists() for n in names.values()):
        return
    work = cache_root() / "gowork" / target.module.replace("/", "_") / target.version
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module cfsandbox/{target.module.replace('/', '_').replace('.', '_')}\n\ngo 1.26\n\n"
        f"require {target.module} {target.version}\n\n{target.extra_gomod}"
    )
    (work / "go.sum").touch()
    _log(f"resolving {target.module}@{target.version} from the Go module proxy")
    _go(["get", *[f"{p}@{target.version}" for p in target.packages]], work)
    for pkg, name in names.items():
        t0 = time.monotonic()
        _log(f"compiling {name} ({pkg}); the first build takes minutes")
        tmp = out / f".{name}.tmp"
        _go(["build", "-trimpath", "-ldflags", target.ldflags, "-o", str(tmp), pkg], work)
        tmp.rename(out / name)
        _log(f"built {name} in {time.monotonic() - t0:.0f}s")


def ensure_built(only: list[str] | None = None) -> Path:
    """Build whatever is missing; return the bin directory. Idempotent and cached per version."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the sandbox (https://go.dev/dl); not found on PATH")
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    scratch = cache_root() / "gowork"
    scratch.mkdir(parents=True, exist_ok=True)
    for target in _targets(scratch):
        if only and not any(p.rsplit("/", 1)[-1] in only or target.module in only for p in target.packages):
            continue
        build_target(target, out)
    return out


if __name__ == "__main__":
    t0 = time.monotonic()
    where = ensure_built(sys.argv[1:] or None)
    _log(f"all binaries in {where} ({time.monotonic() - t0:.0f}s)")
