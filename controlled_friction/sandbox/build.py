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
import tempfile
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
    tags: tuple[str, ...] = ()


def _kubernetes_target(work: Path, commands: tuple[str, ...] = K8S_COMMANDS) -> GoTarget:
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
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in commands),
        ldflags="-s -w " + " ".join(xs),
        extra_gomod="replace (\n\t" + "\n\t".join(replaces) + "\n)\n",
    )


def other_targets() -> list[GoTarget]:
    """The control plane's binaries from modules other than Kubernetes."""
    return [
        GoTarget("go.etcd.io/etcd/server/v3", ETCD_VERSION, ("go.etcd.io/etcd/server/v3",)),
        GoTarget("sigs.k8s.io/kwok", KWOK_VERSION, ("sigs.k8s.io/kwok/cmd/kwok",)),
        GoTarget("helm.sh/helm/v3", HELM_VERSION, ("helm.sh/helm/v3/cmd/helm",),
                 ldflags=f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
    ]


def go_output_name(pkg: str) -> str:
    """The file `go build -o dir/` writes for a main package: its last element, skipping a /vN suffix."""
    parts = pkg.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


def output_names(target: GoTarget) -> dict[str, str]:
    return {pkg: "etcd" if target.module.startswith("go.etcd.io") else go_output_name(pkg)
            for pkg in target.packages}


def work_dir(target: GoTarget) -> Path:
    return cache_root() / "gowork" / target.module.replace("/", "_") / target.version


def build_target(target: GoTarget, dests: dict[str, Path]) -> None:
    """Compile the packages (package -> output file) whose output is missing, in one `go build`.

    One invocation for several commands lets the go tool overlap one binary's link with the next
    one's compiles, and compiles each shared package once.
    """
    missing = {pkg: dest for pkg, dest in dests.items() if not dest.exists()}
    if not missing:
        return
    work = work_dir(target)
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module cfsandbox/{target.module.replace('/', '_').replace('.', '_')}\n\ngo 1.26\n\n"
        f"require {target.module} {target.version}\n\n{target.extra_gomod}"
    )
    (work / "go.sum").touch()
    _log(f"resolving {target.module}@{target.version} from the Go module proxy")
    _go(["get", *[f"{p}@{target.version}" for p in target.packages]], work)
    names = ", ".join(dest.name for dest in missing.values())
    t0 = time.monotonic()
    _log(f"compiling {names}; the first build takes minutes")
    first = next(iter(missing.values()))
    first.parent.mkdir(parents=True, exist_ok=True)
    # Next to the first output so the final rename stays on one filesystem (all are under bin/).
    with tempfile.TemporaryDirectory(dir=first.parent.parent, prefix=".build-") as tmp:
        args = ["build", "-trimpath", "-ldflags", target.ldflags, "-o", tmp + "/"]
        if target.tags:
            args += ["-tags", ",".join(target.tags)]
        _go([*args, *missing], work)
        for pkg, dest in missing.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / go_output_name(pkg)).rename(dest)
    _log(f"built {names} in {time.monotonic() - t0:.0f}s")


def _dests(target: GoTarget, out: Path) -> dict[str, Path]:
    return {pkg: out / name for pkg, name in output_names(target).items()}


def ensure_built(only: list[str] | None = None) -> Path:
    """Build whatever is missing; return the bin directory. Idempotent and cached per version."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the sandbox (https://go.dev/dl); not found on PATH")
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    scratch = cache_root() / "gowork"
    scratch.mkdir(parents=True, exist_ok=True)
    wanted = [n for n in K8S_COMMANDS if not only or n in only]
    if wanted and not all(binary(n).exists() for n in wanted):
        build_target(_kubernetes_target(scratch, tuple(wanted)), {f"k8s.io/kubernetes/cmd/{n}": out / n
                                                                  for n in wanted})
    for target in other_targets():
        names = output_names(target).values()
        if only and not any(n in only for n in names) and target.module not in only:
            continue
        build_target(target, _dests(target, out))
    return out


if __name__ == "__main__":
    t0 = time.monotonic()
    where = ensure_built(sys.argv[1:] or None)
    _log(f"all binaries in {where} ({time.monotonic() - t0:.0f}s)")
