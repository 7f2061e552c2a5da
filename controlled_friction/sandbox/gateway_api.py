"""Gateway API in the sandbox: the standard-channel CRDs (HTTPRoute, Gateway, GatewayClass,
ReferenceGrant, ...), pinned, fetched once from the Go module proxy and cached like the binaries.

The release's `standard-install.yaml` is the concatenation of the files its
`config/crd/kustomization.yaml` lists under `standard/`; we build the same bundle from the
`sigs.k8s.io/gateway-api` module (`go mod download -json` gives the module directory), so the
sandbox needs no download other than the module proxy it already uses. There is no Gateway
controller: the traffic simulator plays the data plane and honours HTTPRoute backendRef weights.

Stdlib only (like `build`), so `python -m controlled_friction.sandbox.gateway_api` can prefetch
before the project's dependencies are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from controlled_friction.sandbox.build import cache_root
from controlled_friction.sandbox.crd_wait import wait_established
from controlled_friction.traffic_routing import GATEWAY_GROUP as GROUP

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
# v1.7.0 needs Go >= 1.27; the newest release the pinned toolchain (1.26) can download is v1.6.3.
GATEWAY_API_VERSION = "v1.6.3"
# CRDs the operator and the simulator rely on; `install` waits until these are Established.
REQUIRED_CRDS = tuple(f"{p}.{GROUP}" for p in ("gatewayclasses", "gateways", "httproutes", "referencegrants"))
FIELD_MANAGER = "cf-sandbox"

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def _log(msg: str) -> None:
    print(f"[sandbox gateway-api] {msg}", file=sys.stderr, flush=True)


def manifest_path(version: str = GATEWAY_API_VERSION) -> Path:
    return cache_root() / "gateway-api" / version / "standard-install.yaml"


def standard_files(module_dir: Path) -> list[Path]:
    """The standard-channel manifests, in the release's order (its kustomization's `resources`)."""
    kustomization = (module_dir / "config" / "crd" / "kustomization.yaml").read_text()
    listed = re.findall(r"^\s*-\s*(standard/\S+\.yaml)\s*$", kustomization, re.MULTILINE)
    if not listed:
        raise RuntimeError(f"no standard/ resources in {module_dir}/config/crd/kustomization.yaml; layout changed?")
    files = [module_dir / "config" / "crd" / rel for rel in listed]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"gateway-api kustomization lists missing files: {', '.join(missing)}")
    return files


def bundle(files: list[Path], version: str) -> str:
    header = (
        f"# Gateway API {version} standard channel, assembled from {GATEWAY_API_MODULE}@{version}\n"
        "# (config/crd/standard/, in the order of config/crd/kustomization.yaml).\n"
    )
    docs = [f"# {f.name}\n{f.read_text().strip()}\n" for f in files]
    return header + "---\n" + "---\n".join(docs)


def module_dir(version: str = GATEWAY_API_VERSION) -> Path:
    """`go mod download` the pinned module (from the proxy, or Go's own cache) and return its directory."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to fetch the Gateway API CRDs (https://go.dev/dl); not found on PATH")
    work = cache_root() / "gowork" / "gateway-api"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        (work / "go.mod").write_text("module cfsandbox/gateway_api\n\ngo 1.26\n")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{version}"],
        cwd=work, env={**os.environ, "GOFLAGS": "-mod=mod"}, capture_output=True, text=True, check=False,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip() or proc.stdout.strip()
        raise RuntimeError(f"go mod download {GATEWAY_API_MODULE}@{version} failed: {detail}")
    return Path(info["Dir"])


def ensure_manifests(version: str = GATEWAY_API_VERSION) -> Path:
    """The cached standard-channel bundle; fetched and assembled once per version. Idempotent."""
    out = manifest_path(version)
    if out.is_file():
        return out
    _log(f"fetching {GATEWAY_API_MODULE}@{version} from the Go module proxy")
    text = bundle(standard_files(module_dir(version)), version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(out)
    _log(f"cached the standard-channel CRDs in {out}")
    return out


def install(kubectl: Kubectl, stamp: Path, *, say: Callable[[str], None] = _log, timeout: float = 60) -> None:
    """Apply the bundle server-side (the CRDs are too big for client-side apply's annotation) and
    wait until the CRDs are Established. Skipped when `stamp` says this bundle is already applied."""
    path = ensure_manifests()
    text = path.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    say(f"installing Gateway API {GATEWAY_API_VERSION} standard-channel CRDs")
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=text)
    wait_established(kubectl, REQUIRED_CRDS, timeout)
    stamp.write_text(digest)


if __name__ == "__main__":
    print(ensure_manifests())
