"""The daemon-less image build (sandbox.image) and the Dockerfile describe the same image."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from controlled_friction.sandbox import image

ROOT = Path(__file__).resolve().parents[1]


def test_image_config_is_read_from_the_dockerfiles_final_stage() -> None:
    s = image.dockerfile_settings()
    assert s.user == "65532:65532"
    assert s.entrypoint == ("controlled-friction", "run")
    assert set(s.exposed) == {"9443/tcp", "8080/tcp", "8081/tcp"}
    assert s.env["PATH"].startswith(f"{image.VENV}/bin:")
    assert {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HOME"} <= set(s.env)
    assert s.labels["org.opencontainers.image.title"] == "controlled-friction"
    config = image.image_config(s, ["a" * 64, "b" * 64])["config"]
    assert config["User"] == s.user and config["Entrypoint"] == list(s.entrypoint)


def test_dockerfile_still_has_the_shape_the_daemonless_build_mirrors() -> None:
    """One venv at /opt/venv, built from the wheel in a builder stage on Python 3.11, copied alone."""
    text = (ROOT / "Dockerfile").read_text()
    assert image.dockerfile_settings(text).copies == (f"--from=builder {image.VENV} {image.VENV}",)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE), \
        "Debian 12's python3 is 3.11: change image.SUITE with the Dockerfile's Python"
    assert f"python -m venv {image.VENV}" in text and "pip install /wheels/*.whl" in text
    assert image.SUITE == "bookworm"


def test_parser_handles_continuations_and_path_expansion() -> None:
    text = 'FROM a AS b\nENV X=1\nFROM c\nENV PATH=/x/bin:$PATH \\\n    A="b c"\nUSER 1:2\nEXPOSE 80 53/udp\n' \
           'ENTRYPOINT ["p", "q"]\n'
    s = image.dockerfile_settings(text, base_path="/bin")
    assert s.env == {"PATH": "/x/bin:/bin", "A": "b c"}
    assert (s.user, s.exposed, s.entrypoint) == ("1:2", ("80/tcp", "53/udp"), ("p", "q"))


def test_oci_archive_names_the_image_and_lists_its_layers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("hi")
    layer = tmp_path / "layer.tar"
    digest = image._tar_layer(src, layer)
    out = tmp_path / "img.tar"
    config = image.image_config(image.dockerfile_settings(), [digest])
    image.write_oci_archive(out, "example.org/x:1", config, [(layer, digest)])
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("./index.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "example.org/x:1"
    assert f"./blobs/sha256/{digest}" in names and "./oci-layout" in names
