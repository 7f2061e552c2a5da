"""The dashboard's HTTP server (aiohttp): static UI plus a small JSON API over the CLI's functions.

Every read and write goes through the same `Kube` adapter and `cli.actions` functions as the
commands, with the credentials of the kubeconfig the dashboard was started with. So an approval made
in the browser is a patch by that user, and the admission webhook verifies it exactly like
`kubectl annotate`; its refusal comes back verbatim. The data shown is `cli.views`' (rows, steps,
approvals, measurements, events), so terminal and browser say the same thing.

The server acts with your credentials, so it defends against other web pages in your browser: it
answers only requests whose Host is its own address (no DNS rebinding), refuses writes without its
custom header or from another Origin (no cross-site requests: a foreign page cannot send that header
without a CORS preflight, which is never granted), and sends a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import urllib3
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from controlled_friction import names
from controlled_friction.adapters.kube import Kube, NotFound
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.cli import actions, views
from controlled_friction.dashboard import plots
from controlled_friction.measurement import resolve_url

STATIC = Path(__file__).parent / "static"
WRITE_HEADER = "X-CF-Dashboard"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Dashboard:
    """What the handlers share: the user's Kube adapter, who that is, and where Prometheus is."""

    kube: Kube
    user: str
    context: str | None = None
    namespace: str | None = None  # restrict the list to one namespace (None: all the user can list)
    prometheus_url: str | None = None  # overrides the Rollout's / policy's address (reachable from here)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    allowed_hosts: set[str] = field(default_factory=set)  # empty: any (tests)
    _prometheus: dict[str, PrometheusClient] = field(default_factory=dict)

    def prometheus(self, url: str) -> PrometheusClient:
        if url not in self._prometheus:
            self._prometheus[url] = PrometheusClient(url)
        return self._prometheus[url]


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """The Kubernetes and Prometheus clients block: run them off the event loop."""
    return await asyncio.to_thread(fn, *args)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _guarded(request: web.Request, call: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Failures as JSON with the API server's (or webhook's) own message."""
    try:
        return await call()
    except actions.CommandError as exc:
        return _error(409 if exc.exit_code == 1 else 400, exc.message)
    except NotFound as exc:
        return _error(404, f"not found: {exc}")
    except ApiException as exc:
        return _error(exc.status if 400 <= (exc.status or 0) < 600 else 502, actions.api_error_message(exc))
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        return _error(502, f"cannot reach the Kubernetes API server: {exc}")


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]
    if dash.allowed_hosts and request.host not in dash.allowed_hosts:
        return web.Response(status=403, text=f"unexpected Host {request.host!r}: open the dashboard by its address")
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if request.headers.get(WRITE_HEADER) != "1":
            return _error(403, f"writes need the {WRITE_HEADER} header (sent by the dashboard's own page)")
        if origin is not None and dash.allowed_hosts and origin.split("://", 1)[-1] not in dash.allowed_hosts:
            return _error(403, f"cross-origin write from {origin} refused")
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# ---------------------------------------------------------------- handlers


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def whoami(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]
    return web.json_response({"user": dash.user, "context": dash.context, "namespace": dash.namespace,
                              "prometheus": dash.prometheus_url})


async def list_rollouts(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]

    async def call() -> web.StreamResponse:
        items = await _run(dash.kube.list_rollouts, dash.namespace)
        rows = views.rollout_rows(items, dash.now())
        ns, phase = request.query.get("namespace"), request.query.get("phase")
        namespaces = sorted({r["namespace"] for r in rows})
        phases = sorted({r["phase"] for r in rows})
        rows = [r for r in rows if (not ns or r["namespace"] == ns) and (not phase or r["phase"] == phase)]
        return web.json_response({"items": rows, "namespaces": namespaces, "phases": phases})

    return await _guarded(request, call)


def _detail(dash: Dashboard, ns: str, name: str) -> dict[str, Any]:
    obj = actions.get_rollout(dash.kube, ns, name)
    try:
        events = dash.kube.list_events(ns, name)
    except ApiException:  # e.g. no RBAC on events: show the rest anyway
        events = []
    report, problem = None, None
    try:
        report = actions.change_report(dash.kube, obj)
    except actions.CommandError as exc:
        problem = exc.message
    data = views.rollout_data(obj, events, dash.now(), report, problem)
    data["user"] = dash.user
    return data


async def rollout_detail(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]
    ns, name = request.match_info["namespace"], request.match_info["name"]

    async def call() -> web.StreamResponse:
        return web.json_response(await _run(_detail, dash, ns, name))

    return await _guarded(request, call)


def prometheus_for(dash: Dashboard, obj: dict[str, Any]) -> str | None:
    """The dashboard's --prometheus-url, else the operator's choice (Rollout, policy, env)."""
    if dash.prometheus_url:
        return dash.prometheus_url
    spec = obj.get("spec") or {}
    own = ((spec.get("analysis") or {}).get("prometheus") or {}).get("address")
    policies = set(((obj.get("status") or {}).get("effectivePlan") or {}).get("policies") or [])
    addresses: list[str] = []
    if policies:
        try:
            addresses = [str(p["spec"]["prometheus"]["address"]) for p in dash.kube.list_policies()
                         if p.get("metadata", {}).get("name") in policies
                         and ((p.get("spec") or {}).get("prometheus") or {}).get("address")]
        except (ApiException, NotFound):  # no RBAC on policies: the env var is still there
            addresses = []
    return resolve_url(own, addresses, os.environ.get(names.ENV_PROMETHEUS_URL))


def _series(dash: Dashboard, ns: str, name: str) -> dict[str, Any]:
    obj = actions.get_rollout(dash.kube, ns, name)
    url = prometheus_for(dash, obj)
    if url is None:
        return {"panels": [], "error": "no Prometheus address: start the dashboard with --prometheus-url "
                "or set CF_PROMETHEUS_URL", "note": None}
    client = dash.prometheus(url)
    out = plots.fetch_plots(obj, client.series, dash.now())
    out["prometheus"] = url
    return out


async def rollout_series(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]
    ns, name = request.match_info["namespace"], request.match_info["name"]

    async def call() -> web.StreamResponse:
        return web.json_response(await _run(_series, dash, ns, name))

    return await _guarded(request, call)


def _act(dash: Dashboard, ns: str, name: str, action: str, revision: str) -> dict[str, Any]:
    if action == "approve":
        rev = actions.approve(dash.kube, ns, name, revision)
        return {"ok": True, "message": f"approval of revision {rev} submitted as {dash.user}; "
                "the admission webhook recorded it under that identity", "hint": None}
    act = cast(actions.Action, action)
    before = actions.request_action(dash.kube, ns, name, act, expect_revision=revision)
    return {"ok": True, "message": f"{act} of revision {revision} requested as {dash.user}; the operator "
            "handles it at its next reconcile", "hint": actions.action_hint(before, act)}


async def rollout_action(request: web.Request) -> web.StreamResponse:
    dash: Dashboard = request.app[DASHBOARD_KEY]
    ns, name, action = request.match_info["namespace"], request.match_info["name"], request.match_info["action"]
    if action not in ("approve", *actions.ACTIONS):
        return _error(404, f"unknown action {action!r}")
    try:
        body = await request.json()
    except ValueError:
        body = None
    revision = body.get("revision") if isinstance(body, dict) else None
    if not isinstance(revision, str) or not revision:
        return _error(400, "the request must name the revision you confirmed: {\"revision\": \"...\"}")

    async def call() -> web.StreamResponse:
        return web.json_response(await _run(_act, dash, ns, name, action, revision))

    return await _guarded(request, call)


def make_app(dash: Dashboard) -> web.Application:
    app = web.Application(middlewares=[security])
    app[DASHBOARD_KEY] = dash
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/rollouts", list_rollouts)
    app.router.add_get("/api/rollouts/{namespace}/{name}", rollout_detail)
    app.router.add_get("/api/rollouts/{namespace}/{name}/series", rollout_series)
    app.router.add_post("/api/rollouts/{namespace}/{name}/{action}", rollout_action)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


def serve(dash: Dashboard, address: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Run until Ctrl-C. `ready` gets the URL once the socket listens."""
    if not dash.allowed_hosts:
        hosts = {address, "localhost", "127.0.0.1"} if address in ("127.0.0.1", "localhost") else {address}
        dash.allowed_hosts = {f"{h}:{port}" for h in hosts} | ({f"[{address}]:{port}"} if ":" in address else set())
    app = make_app(dash)

    async def started(_: web.Application) -> None:
        if ready is not None:
            ready(f"http://{address}:{port}/")

    app.on_startup.append(started)
    web.run_app(app, host=address, port=port, print=None, handle_signals=True)

