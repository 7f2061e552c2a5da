"""The operator times its own API requests by verb and resource (its request histogram)."""

from __future__ import annotations

import pytest

from controlled_friction.adapters.kube import _timed, resource_of

BASE = "https://127.0.0.1:6443"


@pytest.mark.parametrize(("path", "resource"), [
    ("/apis/controlled-friction.io/v1alpha1/namespaces/shop/rollouts/checkout/status", "rollouts/status"),
    ("/apis/controlled-friction.io/v1alpha1/namespaces/shop/rollouts/checkout", "rollouts"),
    ("/apis/apps/v1/namespaces/shop/deployments?dryRun=All", "deployments"),
    ("/apis/apps/v1/namespaces/shop/deployments/checkout-canary/scale", "deployments/scale"),
    ("/api/v1/namespaces/shop/events", "events"),
    ("/api/v1/namespaces/shop", "namespaces"),
    ("/apis/controlled-friction.io/v1alpha1/frictionpolicies/critical/status", "frictionpolicies/status"),
    ("/version", "other"),
])
def test_a_request_url_names_its_resource(path: str, resource: str) -> None:
    assert resource_of(BASE + path) == resource


def test_every_request_is_timed_even_when_it_fails() -> None:
    seen: list[tuple[str, str]] = []

    def request(method: str, url: str, **_: object) -> str:
        if "fail" in url:
            raise ConnectionError("refused")
        return "ok"

    timed = _timed(request, lambda verb, res, s: seen.append((verb, res)) if s >= 0 else None)
    assert timed("PATCH", BASE + "/apis/controlled-friction.io/v1alpha1/namespaces/a/rollouts/b/status") == "ok"
    assert timed("POST", BASE + "/apis/apps/v1/namespaces/a/deployments?dryRun=All") == "ok"
    with pytest.raises(ConnectionError):
        timed("GET", BASE + "/apis/apps/v1/namespaces/fail/deployments/x")
    assert seen == [("patch", "rollouts/status"), ("post-dryrun", "deployments"), ("get", "deployments")]
