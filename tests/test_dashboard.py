"""The dashboard's JSON API over a fake cluster and a fake Prometheus (aiohttp's test server).

The browser itself is tested against the sandbox in tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes.client.exceptions import ApiException

from controlled_friction import analysis, names
from controlled_friction.cli import views
from controlled_friction.dashboard import plots
from controlled_friction.dashboard.server import DASHBOARD_KEY, STATIC, WRITE_HEADER, Dashboard, make_app
from controlled_friction.models.rollout import MetricSpec
from controlled_friction.revision import revision_of
from controlled_friction.template_diff import ANN_CHANGE_RECORD

from .test_template_diff import CANARY, STABLE, deployment

NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
REV = revision_of(CANARY)
STABLE_REV = revision_of(STABLE)
PROM = "http://prometheus.test:9090"
ERRORS = {"name": "errors", "kind": "errorRatio", "maxRatio": 0.05, "maxIncreaseOverStable": 0.01}
ORDERS = {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.2, "maxBaselineDrop": 0.3}
DENIED = ('admission webhook "approvals.controlled-friction.io" denied the request: carol authored revision '
          f"{REV} and cannot approve it")


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def rollout(name: str = "checkout", namespace: str = "shop", phase: str = "AwaitingApproval") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace, "generation": 2, "creationTimestamp": ts(3600),
                     "uid": "u1",
                     "annotations": {names.ANN_AUTHOR: "carol", ANN_CHANGE_RECORD: "SHOP-142: faster checkout"}},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "checkout"}}, "template": CANARY,
                 "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}},
                                                   {"setWeight": 50}]}},
                 "analysis": {"interval": "5s", "window": "30s", "metrics": [ERRORS, ORDERS]}},
        "status": {
            "phase": phase, "message": "step 3/4: waiting for approvals 1/2", "observedGeneration": 2,
            "stableRevision": STABLE_REV, "canaryRevision": REV, "canaryWeight": 20, "effectiveWeight": 20.0,
            "currentStepIndex": 2, "stepStartedAt": ts(30), "rolloutStartedAt": ts(300),
            "approvals": [{"user": "alice", "time": ts(60)}], "approvalsSummary": "1/2",
            "effectivePlan": {
                "steps": [
                    {"kind": "setWeight", "setWeight": 20},
                    {"kind": "pause", "pauseSeconds": 60, "addedBy": [{"policy": "critical", "rule": "minBake"}]},
                    {"kind": "approval", "approvals": [{"count": 2, "groups": [names.SENIOR_GROUP],
                                                        "source": "critical"}],
                     "addedBy": [{"policy": "critical", "rule": "approvals"}]},
                    {"kind": "setWeight", "setWeight": 50},
                ],
                "policies": ["critical"], "metrics": [ERRORS, ORDERS],
            },
            "analysis": {"metrics": [{"metric": "errors", "last": {
                "metric": "errors", "verdict": "pass", "value": 0.01, "bound": "≤ 0.05", "message": "ok",
                "time": ts(5)}}]},
        },
    }


class FakeKube:
    def __init__(self, objs: list[dict[str, Any]]) -> None:
        self.objs = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse: ApiException | None = None

    def list_rollouts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (ns, _), o in self.objs.items() if namespace in (None, ns)]

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objs[(namespace, name)]

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return deployment() if name.endswith("-stable") else None

    def list_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [{"type": "Warning", "reason": "ApprovalIgnored", "message": "a [bracketed] message",
                 "lastTimestamp": ts(10), "count": 2}]

    def list_policies(self) -> list[dict[str, Any]]:
        return []

    def patch_rollout_annotations(self, namespace: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.patches.append((namespace, name, changes))
        return self.objs[(namespace, name)]


class FakePrometheus:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def series(self, query: str, start: datetime, end: datetime, step: float) -> list[tuple[float, float]]:
        self.queries.append(query)
        value = 0.02 if 'track="canary"' in query else 0.01
        first = int(start.timestamp())
        return [(float(t), value) for t in range(first, int(end.timestamp()) + 1, int(step))][-10:]


Call = Callable[[TestClient[Any, Any]], Awaitable[None]]


def with_client(kube: FakeKube, call: Call, prom: FakePrometheus | None = None, **dash: Any) -> Dashboard:
    board = Dashboard(kube=kube, user="alice", context="sandbox-alice", prometheus_url=PROM,  # type: ignore[arg-type]
                      now=lambda: NOW, **dash)
    board._prometheus[PROM] = prom or FakePrometheus()  # type: ignore[assignment]

    async def main() -> None:
        async with TestClient(TestServer(make_app(board))) as client:
            await call(client)

    asyncio.run(main())
    return board


def post(client: TestClient[Any, Any], path: str, body: Any, **headers: str) -> Any:
    return client.post(path, data=json.dumps(body),
                       headers={"Content-Type": "application/json", WRITE_HEADER: "1", **headers})


# ---------------------------------------------------------------- reads


def test_list_is_the_cli_table_as_json_and_filters() -> None:
    objs = [rollout(), rollout("search", "catalog", "Healthy")]

    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await client.get("/api/rollouts")
        assert rsp.status == 200
        data = await rsp.json()
        assert data["items"] == views.rollout_rows(objs, NOW)
        assert data["namespaces"] == ["catalog", "shop"] and data["phases"] == ["AwaitingApproval", "Healthy"]
        row = data["items"][1]
        assert (row["name"], row["phase"], row["weight"], row["step"], row["approvals"], row["age"]) == (
            "checkout", "AwaitingApproval", "20%", "3/4", "1/2", "1h")
        only = await (await client.get("/api/rollouts?phase=Healthy")).json()
        assert [r["name"] for r in only["items"]] == ["search"]
        only = await (await client.get("/api/rollouts?namespace=shop")).json()
        assert [r["name"] for r in only["items"]] == ["checkout"]

    with_client(FakeKube(objs), call)


def test_rollout_detail_has_timeline_approvals_diff_measurements_and_events() -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await client.get("/api/rollouts/shop/checkout")
        assert rsp.status == 200, await rsp.text()
        d = await rsp.json()
        assert d["phase"] == "AwaitingApproval" and d["actedRevision"] == REV and d["user"] == "alice"
        assert d["diff"]["summary"] == "image checkout:2.4.1 → 2.5.0, 1 env var changed"
        assert d["diffLines"][0] == "~ spec.containers[app].image: shop/checkout:2.4.1 → shop/checkout:2.5.0"
        assert d["changeRecord"] == "SHOP-142: faster checkout" and d["author"] == "carol"
        assert [s["state"] for s in d["steps"]] == ["done", "done", "current", "pending"]
        assert d["steps"][1]["addedBy"] == [{"policy": "critical", "rule": "minBake"}]
        assert d["steps"][2]["summary"].startswith("2 approvals from senior-engineers")
        appr = d["approvals"]
        assert appr["more"] == 1 and appr["groups"] == [names.SENIOR_GROUP] and appr["atGate"]
        assert appr["approvers"][0]["user"] == "alice" and appr["approvers"][0]["ago"] == "1m"
        assert d["measurements"][0]["metric"] == "errors" and d["measurements"][1]["verdict"] is None
        assert d["events"][0]["message"] == "a [bracketed] message"
        assert d["stepText"] == views.step_progress(views.read_status(rollout())[0], NOW)  # type: ignore[arg-type]

    with_client(FakeKube([rollout()]), call)


def test_bake_countdown_is_in_the_timeline() -> None:
    obj = rollout(phase="Progressing")
    obj["status"]["currentStepIndex"] = 1

    async def call(client: TestClient[Any, Any]) -> None:
        d = await (await client.get("/api/rollouts/shop/checkout")).json()
        assert d["steps"][1]["state"] == "current" and d["steps"][1]["remainingSeconds"] == 30
        assert "bake 30s left" in d["stepText"]

    with_client(FakeKube([obj]), call)


def test_missing_rollout_is_a_json_error() -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await client.get("/api/rollouts/shop/nope")
        assert rsp.status == 409 and "not found" in (await rsp.json())["error"]

    class Missing(FakeKube):
        def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
            from controlled_friction.adapters.kube import NotFound
            raise NotFound("rollouts.controlled-friction.io nope")

    with_client(Missing([]), call)


# ---------------------------------------------------------------- plots


def test_series_runs_the_operators_queries_as_range_queries_with_bounds() -> None:
    prom = FakePrometheus()

    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await client.get("/api/rollouts/shop/checkout/series")
        assert rsp.status == 200, await rsp.text()
        d = await rsp.json()
        titles = [p["title"] for p in d["panels"]]
        assert titles == ["errors: 5xx share of requests", "orders: orders per request",
                          "orders: service orders per second"]
        errors = d["panels"][0]
        labels = [s["label"] for s in errors["series"]]
        assert labels == ["canary", "stable", "bound: maxRatio 5%", "bound: stable + 1%"]
        canary, stable, bound, inc = errors["series"]
        assert canary["points"] == 10 and stable["points"] == 10 and len(canary["values"]) == len(errors["x"])
        assert set(bound["values"]) == {0.05}
        assert [round(v, 6) for v in inc["values"] if v is not None] == [0.02] * 10
        orders_bound = d["panels"][1]["series"][2]
        assert orders_bound["label"] == "bound: 80% of stable"
        assert [s["label"] for s in d["panels"][2]["series"]] == [
            "service order rate", "pre-rollout baseline", "bound: 70% of baseline"]
        assert d["prometheus"] == PROM and d["canaryRevision"] == REV

    with_client(FakeKube([rollout()]), call, prom)
    # exactly the operator's queries (analysis.queries_for with the operator's QueryContext)
    found = plots.query_context(rollout())
    assert found is not None
    ctx = found[2]
    assert (ctx.service, ctx.canary_revision, ctx.window_seconds, ctx.min_requests) == ("checkout", REV, 30.0, 20)
    expected = {q for m in (ERRORS, ORDERS) for name, q in analysis.queries_for(MetricSpec.model_validate(m), ctx)
                .items() if name != analysis.CANARY_REQUESTS}
    assert set(prom.queries) == expected


def test_time_range_starts_before_the_rollout_and_is_capped() -> None:
    status = views.read_status(rollout())[0]
    assert status is not None
    start, end, step = plots.time_range(status, NOW)
    assert end == NOW and start == NOW - timedelta(seconds=360) and step == 2
    status.rollout_started_at = NOW - timedelta(hours=5)
    start, _, step = plots.time_range(status, NOW)
    assert start == NOW - plots.MAX_SPAN and step == 8


def test_no_canary_means_nothing_to_plot() -> None:
    obj = rollout(phase="Healthy")
    obj["status"]["canaryRevision"] = None
    assert plots.fetch_plots(obj, FakePrometheus().series, NOW)["panels"] == []


# ---------------------------------------------------------------- writes, as the user


def test_approve_writes_the_confirmed_revision_as_the_user() -> None:
    kube = FakeKube([rollout()])

    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await post(client, "/api/rollouts/shop/checkout/approve", {"revision": REV})
        assert rsp.status == 200, await rsp.text()
        assert "as alice" in (await rsp.json())["message"]

    with_client(kube, call)
    assert kube.patches == [("shop", "checkout", {names.ANN_APPROVE: REV})]


def test_webhook_refusal_is_returned_verbatim() -> None:
    kube = FakeKube([rollout()])
    kube.refuse = ApiException(status=403, reason="Forbidden")
    kube.refuse.body = json.dumps({"kind": "Status", "code": 403, "message": DENIED})

    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await post(client, "/api/rollouts/shop/checkout/approve", {"revision": REV})
        assert rsp.status == 409
        assert (await rsp.json())["error"] == DENIED

    with_client(kube, call)


def test_actions_need_the_revision_that_was_confirmed() -> None:
    kube = FakeKube([rollout()])

    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await post(client, "/api/rollouts/shop/checkout/abort", {"revision": "0000000000"})
        assert rsp.status == 409
        assert f"now at revision {REV}, not 0000000000" in (await rsp.json())["error"]
        rsp = await post(client, "/api/rollouts/shop/checkout/abort", {})
        assert rsp.status == 400
        rsp = await post(client, "/api/rollouts/shop/checkout/abort", {"revision": REV})
        assert rsp.status == 200, await rsp.text()
        rsp = await post(client, "/api/rollouts/shop/checkout/explode", {"revision": REV})
        assert rsp.status == 404

    with_client(kube, call)
    assert kube.patches == [("shop", "checkout", {names.ANN_ACTION: "abort"})]


def test_cross_site_and_rebinding_requests_are_refused() -> None:
    kube = FakeKube([rollout()])

    async def call(client: TestClient[Any, Any]) -> None:
        host = f"{client.host}:{client.port}"
        rsp = await client.post("/api/rollouts/shop/checkout/approve", data=json.dumps({"revision": REV}),
                                headers={"Content-Type": "text/plain"})
        assert rsp.status == 403  # no custom header: a form or fetch from another site
        rsp = await post(client, "/api/rollouts/shop/checkout/approve", {"revision": REV},
                         Origin="http://evil.example")
        assert rsp.status == 403
        rsp = await client.get("/api/rollouts", headers={"Host": "evil.example"})
        assert rsp.status == 403  # DNS rebinding: a foreign name pointing at 127.0.0.1
        rsp = await post(client, "/api/rollouts/shop/checkout/approve", {"revision": REV},
                         Origin=f"http://{host}")
        assert rsp.status == 200

    async def wrapped(client: TestClient[Any, Any]) -> None:
        client.app[DASHBOARD_KEY].allowed_hosts = {f"{client.host}:{client.port}"}
        await call(client)

    with_client(kube, wrapped)
    assert kube.patches == [("shop", "checkout", {names.ANN_APPROVE: REV})]


# ---------------------------------------------------------------- the page


def test_page_and_vendored_chart_library_are_served_with_a_strict_policy() -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        rsp = await client.get("/")
        assert rsp.status == 200 and "app.js" in await rsp.text()
        assert "default-src 'self'" in rsp.headers["Content-Security-Policy"]
        rsp = await client.get("/static/uPlot.iife.min.js")
        assert rsp.status == 200 and "uPlot" in (await rsp.text())[:200]
        rsp = await client.get("/api/whoami")
        assert (await rsp.json())["user"] == "alice"

    with_client(FakeKube([]), call)
    assert "MIT" in (STATIC / "uPlot.LICENSE").read_text()


@pytest.mark.parametrize("name", ["index.html", "app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"])
def test_static_files_exist(name: str) -> None:
    assert (STATIC / name).stat().st_size > 0


# ---------------------------------------------------------------- PrometheusClient.series


def test_series_sums_series_per_timestamp_and_drops_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    from controlled_friction.adapters.prometheus import PrometheusClient, PrometheusUnavailable

    client = PrometheusClient("http://127.0.0.1:1", timeout=0.5)
    seen: dict[str, Any] = {}

    def fake_range(query: str, start_time: datetime, end_time: datetime, step: str) -> list[dict[str, Any]]:
        seen.update(query=query, step=step, start=start_time, end=end_time)
        return [{"metric": {"track": "a"}, "values": [[100, "1"], [102, "NaN"], [104, "2"]]},
                {"metric": {"track": "b"}, "values": [[100, "0.5"], [104, "+Inf"]]}]

    monkeypatch.setattr(client._conn, "custom_query_range", fake_range)
    assert client.series("up", NOW - timedelta(minutes=1), NOW, 2) == [(100.0, 1.5), (104.0, 2.0)]
    assert seen["step"] == "2s" and seen["end"] == NOW
    # a dead Prometheus is an error the panel can show, not a crash
    monkeypatch.undo()
    with pytest.raises(PrometheusUnavailable, match="unreachable"):
        client.series("up", NOW - timedelta(minutes=1), NOW, 2)
