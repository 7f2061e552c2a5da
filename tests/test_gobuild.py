"""How the sandbox's Go binaries are named and keyed (no Go toolchain needed)."""

from __future__ import annotations

from controlled_friction.sandbox import build, nodebuild


def test_output_names_follow_go_build_dir_naming() -> None:
    assert build.go_output_name("k8s.io/kubernetes/cmd/kubelet") == "kubelet"
    assert build.go_output_name("go.etcd.io/etcd/server/v3") == "server"  # the /vN suffix is skipped
    etcd = next(t for t in build.other_targets() if t.module.startswith("go.etcd.io"))
    assert list(build.output_names(etcd).values()) == ["etcd"]


def test_containerd_build_tags_are_in_the_node_cache_key() -> None:
    # A binary built with other tags must not be taken from a stale cache directory.
    key = nodebuild.bin_dir().name
    assert nodebuild.CONTAINERD_VERSION in key
    for tag in nodebuild.CONTAINERD_TAGS:
        assert tag.removeprefix("no_") in key
