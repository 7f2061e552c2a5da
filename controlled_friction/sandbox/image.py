"""The operator image, built without a Docker daemon, as an OCI archive containerd can import.

What the ``Dockerfile`` describes, from Debian's own packages: a ``debootstrap`` root filesystem of
Debian 12 with ``python3`` (3.11, the Dockerfile's Python), a venv at ``/opt/venv`` holding the
project's wheel and its dependencies, and the final stage's ENV, USER, EXPOSE, LABEL and ENTRYPOINT.
Those settings are *read from the Dockerfile* (`dockerfile_settings`), so the two cannot drift; a
test also checks the Dockerfile still has the shape this relies on (one venv copied into the final
stage). No image is pulled from any registry.

Two layers: the root filesystem (built once, cached by Debian suite and package list) and the venv
(rebuilt when the project's sources change). Everything is cached under
``~/.cache/controlled-friction/image``. Also builds the tiny pause image the real node's pods use.
Linux and root only (debootstrap, chroot).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import controlled_friction
from controlled_friction.sandbox.build import cache_root

SUITE = "bookworm"
ROOTFS_PACKAGES = ("python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/venv"
# The name the chart uses by default (values.yaml image.repository, tag = appVersion): imported
# under it, the chart's pods find the image on the node and never pull.
OPERATOR_REPOSITORY = "ghcr.io/controlled-friction/controlled-friction"
PAUSE_REF = "cf-sandbox.local/pause:1"

SOURCE_ROOT = Path(controlled_friction.__file__).resolve().parent.parent
DOCKERFILE = SOURCE_ROOT / "Dockerfile"


def _log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def image_cache() -> Path:
    return cache_root() / "image"


# --- the Dockerfile, as data ---------------------------------------------------------------------


@dataclass(frozen=True)
class DockerfileSettings:
    """The final stage's runtime settings (what ends up in the image config)."""

    env: dict[str, str]
    user: str
    exposed: tuple[str, ...]
    entrypoint: tuple[str, ...]
    labels: dict[str, str]
    copies: tuple[str, ...] = field(default=())  # "COPY" lines of the final stage, verbatim


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _pairs(rest: str) -> dict[str, str]:
    pairs = {}
    for item in shlex.split(rest):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"only KEY=VALUE forms are supported, got {item!r}")
        pairs[key] = value
    return pairs


def dockerfile_settings(text: str | None = None, base_path: str = BASE_PATH) -> DockerfileSettings:
    text = DOCKERFILE.read_text() if text is None else text
    instructions = _instructions(text)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    env: dict[str, str] = {"PATH": base_path}
    user, exposed, entrypoint, labels, copies = "", [], [], {}, []
    for word, rest in instructions[last_from + 1:]:
        if word == "ENV":
            for key, value in _pairs(rest).items():
                env[key] = value.replace("$PATH", env.get("PATH", "")).replace("${PATH}", env.get("PATH", ""))
        elif word == "USER":
            user = rest
        elif word == "EXPOSE":
            exposed += [p if "/" in p else f"{p}/tcp" for p in rest.split()]
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "LABEL":
            labels.update(_pairs(rest))
        elif word == "COPY":
            copies.append(rest)
    return DockerfileSettings(env, user, tuple(exposed), tuple(entrypoint), labels, tuple(copies))


def project_version() -> str:
    text = (SOURCE_ROOT / "pyproject.toml").read_text()
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not found:
        raise RuntimeError("no version in pyproject.toml")
    return found.group(1)


def operator_ref() -> str:
    return f"{OPERATOR_REPOSITORY}:{project_version()}"


# --- the root filesystem -------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for src in candidates:
        try:
            text = src.read_text()
        except OSError:
            continue
        for stanza in text.split("\n\n"):
            if re.search(rf"^Suites:.*\b{SUITE}\b", stanza, re.MULTILINE):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
                if uris and "security" not in uris.group(1):
                    return uris.group(1)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE and "security" not in parts[1]:
                return parts[1]
    return DEFAULT_MIRROR


def _rootfs_key() -> str:
    return hashlib.sha256(f"{SUITE}|{','.join(ROOTFS_PACKAGES)}".encode()).hexdigest()[:12]


def ensure_rootfs() -> Path:
    """A debootstrapped Debian root filesystem (minbase + python3), built once and cached."""
    root = image_cache() / f"rootfs-{SUITE}-{_rootfs_key()}"
    if (root / ".complete").exists():
        return root / "rootfs"
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not found: `apt-get install debootstrap`")
    if os.geteuid() != 0:
        raise RuntimeError("building the root filesystem needs root (debootstrap)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    mirror = debian_mirror()
    t0 = time.monotonic()
    _log(f"debootstrap {SUITE} from {mirror} (once; about 2 minutes)")
    log = root / "debootstrap.log"
    with log.open("w") as out:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE,
             str(root / "rootfs"), mirror],
            stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({proc.returncode}); see {log}")
    rootfs = root / "rootfs"
    # What a slim base image leaves out: package caches and lists, docs.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                 "usr/share/info"):
        for child in (rootfs / junk).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.name != "lock" and child.name != "partial":
                child.unlink()
    (root / ".complete").write_text(json.dumps({"mirror": mirror, "seconds": round(time.monotonic() - t0)}))
    _log(f"root filesystem ready in {time.monotonic() - t0:.0f}s")
    return rootfs


# --- OCI archives ------------------------------------------------------------------------------


def _tar_layer(src: Path, out: Path) -> str:
    """An uncompressed layer tar of `src`'s contents; returns its sha256.

    File times are kept: Python checks each .pyc against its source's mtime, and on a read-only root
    filesystem a mismatch means compiling every module at every start (over a minute for kopf and
    the kubernetes client on a busy 2-core machine: startup probes fail).
    """
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "--xattrs",
                    "-C", str(src), "-cf", str(tmp), "."], check=True)
    digest = _sha256_file(tmp)
    tmp.rename(out)
    return digest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_layer(src: Path, out: Path) -> str:
    digest_file = out.with_name(out.name + ".sha256")
    if out.exists() and digest_file.exists():
        return digest_file.read_text().strip()
    digest = _tar_layer(src, out)
    digest_file.write_text(digest)
    return digest


def image_config(settings: DockerfileSettings, diff_ids: list[str]) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": settings.user,
            "Env": [f"{k}={v}" for k, v in settings.env.items()],
            "Entrypoint": list(settings.entrypoint),
            "ExposedPorts": {p: {} for p in settings.exposed},
            "Labels": settings.labels,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "controlled-friction sandbox image builder"}],
    }


def write_oci_archive(out: Path, ref: str, config: dict[str, Any], layers: list[tuple[Path, str]]) -> None:
    """An OCI image layout, as a tar, naming the image `ref` (for `ctr images import`)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmpdir:
        layout = Path(tmpdir)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)

        def blob(data: bytes) -> str:
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            return digest

        for path, digest in layers:
            os.link(path, blobs / digest) if path.stat().st_dev == blobs.stat().st_dev else shutil.copy(
                path, blobs / digest)
        config_bytes = json.dumps(config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{blob(config_bytes)}", "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{d}",
                        "size": p.stat().st_size} for p, d in layers],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{blob(manifest_bytes)}",
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]},
            }],
        }
        (layout / "index.json").write_text(json.dumps(index))
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        tmp = out.with_name(out.name + ".tmp")
        subprocess.run(["tar", "-C", str(layout), "-cf", str(tmp), "."], check=True)
        tmp.rename(out)


# --- the operator image --------------------------------------------------------------------------


def _source_digest() -> str:
    """Hash of what goes into the wheel and the image config.

    `controlled_friction/sandbox/` counts too: the entrypoint (`controlled-friction run`) loads the
    CLI, which imports the sandbox commands and with them most of the sandbox package.
    """
    h = hashlib.sha256()
    files = [SOURCE_ROOT / "pyproject.toml", DOCKERFILE]
    package = SOURCE_ROOT / "controlled_friction"
    files += sorted(p for p in package.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".typed"))
    for p in files:
        h.update(str(p.relative_to(SOURCE_ROOT)).encode())
        h.update(p.read_bytes())
    h.update(_rootfs_key().encode())
    return h.hexdigest()[:16]


def _chroot(rootfs: Path, *argv: str) -> None:
    env = {"PATH": BASE_PATH, "HOME": "/root", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    proc = subprocess.run(["chroot", str(rootfs), *argv], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chroot {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _build_venv(rootfs: Path, stage: Path) -> None:
    """Create /opt/venv inside the root filesystem with the project's wheel, then move it to `stage`."""
    wheels = rootfs / "tmp" / "cf-wheels"
    venv = rootfs / VENV.lstrip("/")
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    wheels.mkdir(parents=True)
    t0 = time.monotonic()
    # The project's wheel plus wheels of its dependencies (the host's Python is the same Debian 3.11).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(SOURCE_ROOT)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    _log(f"wheels ready in {time.monotonic() - t0:.0f}s")
    try:
        _chroot(rootfs, "/usr/bin/python3", "-m", "venv", VENV)
        _chroot(rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/tmp/cf-wheels",
                "controlled-friction")
        _chroot(rootfs, f"{VENV}/bin/controlled-friction", "--help")  # as the Dockerfile checks
        target = stage / VENV.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(venv), str(target))
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    archive: Path


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One image build at a time (they share the root filesystem's /opt and /tmp)."""
    image_cache().mkdir(parents=True, exist_ok=True)
    with (image_cache() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_operator_image() -> BuiltImage:
    """The operator image as an OCI archive (cached by source digest)."""
    with _locked():
        return _ensure_operator_image()


def _ensure_operator_image() -> BuiltImage:
    settings = dockerfile_settings()
    rootfs = ensure_rootfs()
    base_layer = rootfs.parent / "layer.tar"
    base_digest = _cached_layer(rootfs, base_layer)
    key = _source_digest()
    work = image_cache() / "operator"
    work.mkdir(parents=True, exist_ok=True)
    archive = work / f"operator-{key}.oci.tar"
    ref = operator_ref()
    if archive.exists():
        return BuiltImage(ref, archive)
    for old in work.glob("operator-*"):  # one image per checkout is enough
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    t0 = time.monotonic()
    _log(f"building {ref} (venv layer) from {SOURCE_ROOT}")
    stage = work / f"operator-{key}.stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    _build_venv(rootfs, stage)
    venv_layer = work / f"operator-{key}.venv.tar"
    venv_digest = _tar_layer(stage, venv_layer)
    shutil.rmtree(stage)
    config = image_config(settings, [base_digest, venv_digest])
    write_oci_archive(archive, ref, config, [(base_layer, base_digest), (venv_layer, venv_digest)])
    venv_layer.unlink()
    _log(f"{ref} built in {time.monotonic() - t0:.0f}s ({archive})")
    return BuiltImage(ref, archive)


def ensure_pause_image(pause_binary: Path) -> BuiltImage:
    """A one-file image with the pause program (the pod sandbox container)."""
    with _locked():
        return _ensure_pause_image(pause_binary)


def _ensure_pause_image(pause_binary: Path) -> BuiltImage:
    work = image_cache() / "pause"
    work.mkdir(parents=True, exist_ok=True)
    digest = _sha256_file(pause_binary)[:16]
    archive = work / f"pause-{digest}.oci.tar"
    if archive.exists():
        return BuiltImage(PAUSE_REF, archive)
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    shutil.copy2(pause_binary, stage / "pause")
    layer = work / "layer.tar"
    layer.unlink(missing_ok=True)
    layer_digest = _tar_layer(stage, layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    }
    write_oci_archive(archive, PAUSE_REF, config, [(layer, layer_digest)])
    layer.unlink()
    shutil.rmtree(stage)
    return BuiltImage(PAUSE_REF, archive)


def ensure_rootfs_locked() -> Path:
    with _locked():
        return ensure_rootfs()


if __name__ == "__main__":
    t_start = time.monotonic()
    if sys.argv[1:] == ["--rootfs"]:  # `scripts/setup.sh` runs this beside pip: stdlib only
        _log(f"root filesystem: {ensure_rootfs_locked()} ({time.monotonic() - t_start:.0f}s)")
        sys.exit(0)
    built = ensure_operator_image()
    _log(f"{built.ref}: {built.archive} ({time.monotonic() - t_start:.0f}s)")
