"""`controlled-friction`: run the operator, inspect Rollouts, approve and act on them.

Exit codes: 0 ok, 1 failure or rejected by the cluster, 2 timeout or usage error. All rendering
lives in `views` (pure); all API access goes through `adapters.kube.Kube`.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException, list_kube_config_contexts
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from controlled_friction.adapters.kube import Kube, NotFound, load_api_client
from controlled_friction.cli import actions, views
from controlled_friction.durations import parse_duration

app = typer.Typer(
    name="controlled-friction",
    help="Canary Rollouts with policy-driven friction and automatic rollback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

try:  # the sandbox commands are optional: the CLI works against any cluster without them
    from controlled_friction.cli.sandbox_cmd import app as sandbox_app
except ImportError:  # pragma: no cover - only when the sandbox package is absent
    pass
else:
    app.add_typer(sandbox_app, name="sandbox")

# A pipe (CI log, `| less`) has no width: do not squeeze tables into 80 columns there.
PIPE_WIDTH = 200
out = Console(highlight=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out = Console(highlight=False, width=PIPE_WIDTH)
err = Console(stderr=True, highlight=False)
REFRESH_SECONDS = 2.0
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# ---------------------------------------------------------------- shared options

Kubeconfig = Annotated[
    str | None,
    typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)."),
]
KubeContext = Annotated[str | None, typer.Option("--context", help="Kubeconfig context to use.")]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace (default: the context's namespace, else 'default')."),
]
AllNamespaces = Annotated[bool, typer.Option("--all-namespaces", "-A", help="List Rollouts in every namespace.")]
RolloutName = Annotated[str, typer.Argument(help="Name of the Rollout.", metavar="NAME", show_default=False)]


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen kubeconfig context, else the pod's own (in-cluster), else default."""
    try:
        contexts, active = list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, TypeError):
        contexts, active = [], None
    if contexts or active:
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
        ns = ((chosen or {}).get("context") or {}).get("namespace")
        return str(ns) if ns else "default"
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def connect(kubeconfig: str | None, context: str | None) -> Kube:
    try:
        return Kube(load_api_client(kubeconfig, context))
    except (ConfigException, OSError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise actions.CommandError(f"cannot load kubeconfig {where}: {exc}") from exc


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(Text(message, style="bold red"), soft_wrap=True)  # one greppable line in CI logs
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the failures a command can meet into one red line and an exit code (no tracebacks)."""
    try:
        yield
    except actions.CommandError as exc:
        fail(exc.message, exc.exit_code)
    except NotFound as exc:
        fail(f"not found: {exc}")
    except ApiException as exc:
        fail(actions.api_error_message(exc))
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        fail(f"cannot reach the Kubernetes API server: {network_reason(exc)}")


def network_reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, without urllib3's retry wrapper text."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return str(exc.reason)
    return str(exc)


def now() -> datetime:
    return datetime.now(UTC)


def _target(kubeconfig: str | None, context: str | None, namespace: str | None) -> tuple[Kube, str]:
    kube = connect(kubeconfig, context)
    return kube, namespace or default_namespace(kubeconfig, context)


# ---------------------------------------------------------------- run / demo


class WebhookModeChoice(enum.StrEnum):
    auto = "auto"
    local = "local"
    service = "service"
    none = "none"


class ComponentChoice(enum.StrEnum):
    all = "all"
    controller = "controller"
    webhooks = "webhooks"


@app.command()
def run(
    kubeconfig: Kubeconfig = None,
    peering: Annotated[
        str | None,
        typer.Option("--peering", help="kopf peering name for HA (one active operator); omit for standalone."),
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Peering priority; the highest one is active.")] = 0,
    webhook_mode: Annotated[
        WebhookModeChoice,
        typer.Option(
            "--webhook-mode",
            help="Admission webhooks: 'auto' (service in a pod, else local; said at start-up), 'local' "
            "(API server calls this process at --webhook-host), 'service' (in-cluster Service), "
            "'none' (no webhooks: approvals cannot be verified).",
            case_sensitive=False,
        ),
    ] = WebhookModeChoice.auto,
    webhook_host: Annotated[str, typer.Option("--webhook-host", help="Address the webhook server listens on.")] = (
        "127.0.0.1"
    ),
    webhook_port: Annotated[int, typer.Option("--webhook-port", help="Port of the webhook server.")] = 9443,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Prometheus metrics of the operator; 0 disables.")
    ] = 8080,
    health_port: Annotated[int, typer.Option("--health-port", help="Liveness endpoint /healthz; 0 disables.")] = 8081,
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", help="Shard: reconcile only Rollouts matching this label selector."),
    ] = None,
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Shard: reconcile only Rollouts in these namespaces (repeatable)."),
    ] = None,
    workers: Annotated[int, typer.Option(
        "--workers", envvar="CF_WORKERS",
        help="Reconciles run in parallel (threads; they mostly wait on the API server)."),
    ] = 32,
    component: Annotated[
        ComponentChoice,
        typer.Option("--component", help="'all', 'controller' (reconcile only) or 'webhooks' (admission only).",
                     case_sensitive=False),
    ] = ComponentChoice.all,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Start the operator (kopf): reconcile Rollouts, serve admission webhooks and metrics."""
    from controlled_friction.operator.main import run as run_operator

    for flag, port in (
        ("--webhook-port", webhook_port),
        ("--metrics-port", metrics_port),
        ("--health-port", health_port),
    ):
        if not 0 <= port <= 65535:
            raise typer.BadParameter(f"{port} is not a port number", param_hint=flag)
    run_operator(
        kubeconfig=kubeconfig,
        peering=peering,
        priority=priority,
        webhook_mode=None if webhook_mode is WebhookModeChoice.auto else webhook_mode.value,  # type: ignore[arg-type]
        webhook_host=webhook_host,
        webhook_port=webhook_port,
        metrics_port=metrics_port or None,
        health_port=health_port or None,
        selector=selector,
        namespaces=tuple(namespace or ()),
        workers=workers,
        component=component.value,
        verbose=verbose,
    )


@app.command()
def demo() -> None:
    """The whole story on a local control plane: approval gate, then an automatic rollback."""
    from controlled_friction import demo as demo_module

    raise typer.Exit(demo_module.main())


# ---------------------------------------------------------------- status


def _parse_timeout(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def status(
    name: Annotated[
        str | None, typer.Argument(help="A Rollout; omit to list them.", metavar="[NAME]", show_default=False)
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every 2s until Ctrl-C.")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Block until the current template is Healthy (exit 0), RolledBack or Invalid (exit 1) "
            "or --timeout passes (exit 2). For CI pipelines.",
        ),
    ] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits, e.g. 90s, 10m, 1h.")] = "10m",
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
    all_namespaces: AllNamespaces = False,
) -> None:
    """List Rollouts, or show one: phase, weights, current step and bake left, approvals, analysis, events."""
    if watch and wait:
        raise typer.BadParameter("use either --watch or --wait", param_hint="--watch/--wait")
    if wait and name is None:
        raise typer.BadParameter("--wait needs a Rollout NAME", param_hint="--wait")
    if all_namespaces and name is not None:
        raise typer.BadParameter("-A lists Rollouts; give -n NAMESPACE to show one", param_hint="-A")
    limit = _parse_timeout(timeout)
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        if wait:
            assert name is not None
            raise typer.Exit(_wait(kube, ns, name, limit))
        render: Callable[[], RenderableType]
        if name is None:
            render = functools.partial(_list_view, kube, None if all_namespaces else ns)
        else:
            render = functools.partial(_rollout_view, kube, ns, name)
        if watch:
            _watch(render)
        else:
            out.print(render())


def _list_view(kube: Kube, namespace: str | None) -> RenderableType:
    try:
        items = kube.list_rollouts(namespace)
    except NotFound as exc:
        raise actions.CommandError(
            "this cluster has no Rollout API (rollouts.controlled-friction.io): install the CRDs"
        ) from exc
    if not items:
        return Text(f"No Rollouts found in {f'namespace {namespace}' if namespace else 'any namespace'}.")
    return views.rollouts_table(items, now())


def _rollout_view(kube: Kube, namespace: str, name: str) -> RenderableType:
    obj = actions.get_rollout(kube, namespace, name)
    try:
        events = kube.list_events(namespace, name)
    except ApiException:  # e.g. no RBAC on events: show the rest anyway
        events = []
    try:
        change = actions.change_report(kube, obj).summary
    except actions.CommandError as exc:  # e.g. no RBAC on Deployments: say so, show the rest
        change = f"unknown: {exc.message}"
    return views.rollout_panel(obj, events, now(), change=change)


def _watch(render: Callable[[], RenderableType]) -> None:
    """Redraw in place on a terminal; on a pipe, print one frame per refresh (rich Live cannot redraw)."""

    def frame() -> RenderableType:
        try:
            body = render()
        except actions.CommandError as exc:
            body = Text(exc.message, style="red")
        except ApiException as exc:
            body = Text(actions.api_error_message(exc), style="red")
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            body = Text(f"cannot reach the Kubernetes API server: {network_reason(exc)}", style="red")
        stamp = Text(
            f"{now().strftime('%H:%M:%S')} UTC — refreshing every {REFRESH_SECONDS:g}s, Ctrl-C to stop", style="dim"
        )
        return Group(stamp, body)

    try:
        if out.is_terminal:
            with Live(frame(), console=out, auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(REFRESH_SECONDS)
                    live.update(frame(), refresh=True)
        else:
            while True:
                out.print(frame())
                out.rule()
                time.sleep(REFRESH_SECONDS)
    except KeyboardInterrupt:
        return


def _wait(kube: Kube, ns: str, name: str, limit: float) -> int:
    deadline = time.monotonic() + limit
    last_line = ""
    outcome = actions.WaitOutcome("pending", "not read yet")
    while True:
        try:
            obj = actions.get_rollout(kube, ns, name)
        except (ApiException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            # A CI job should survive an API server blip; it still ends at the deadline.
            line = f"cannot read {ns}/{name}: {network_reason(exc)}"
        else:
            outcome = actions.wait_outcome(obj)
            st = obj.get("status") or {}
            line = f"{st.get('phase') or 'Pending'}: {outcome.reason}"
            if outcome.state == "healthy":
                out.print(Text(f"rollout {ns}/{name} is Healthy: {outcome.reason}", style="green"), soft_wrap=True)
                return 0
            if outcome.state == "failed":
                err.print(
                    Text(f"rollout {ns}/{name} is {st.get('phase')}: {outcome.reason}", style="bold red"),
                    soft_wrap=True,
                )
                return 1
        if line != last_line:
            out.print(Text(f"{now().strftime('%H:%M:%S')} {line}"), soft_wrap=True)
            last_line = line
        left = deadline - time.monotonic()
        if left <= 0:
            err.print(
                Text(
                    f"timed out after {views.human_duration(limit)} waiting for {ns}/{name}; last state: {line}",
                    style="bold red",
                ),
                soft_wrap=True,
            )
            return 2
        time.sleep(min(REFRESH_SECONDS, left))


# ---------------------------------------------------------------- explain / history


@app.command()
def explain(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """The effective plan step by step, with the policy and rule behind each step and metric.

    During a canary: the plan frozen for it. Otherwise: the plan the next template change would get."""
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        obj = actions.get_rollout(kube, ns, name)
        out.print(views.explain_view(obj, preview=actions.preview_plan(kube, obj)))


@app.command()
def history(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """Past revisions: outcome, time, reason, approvers and author."""
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        out.print(views.history_table(actions.get_rollout(kube, ns, name), now()))


# ---------------------------------------------------------------- approve & actions


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"


@app.command()
def diff(
    name: RolloutName,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="text (for people) or json (for scripts).",
                                   case_sensitive=False)
    ] = OutputFormat.text,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """What the canary changes: the stable -> canary pod-template diff, with change record and author.

    Stable is what the <NAME>-stable Deployment runs; canary is the Rollout's spec.template."""
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        report = actions.change_report(kube, actions.get_rollout(kube, ns, name))
    if output == OutputFormat.json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        out.print(views.diff_view(report))


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


@app.command()
def approve(
    name: RolloutName,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Revision to approve (default: the canary revision in status)."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Approve without asking. Without it the change is shown and you are asked to confirm; "
            "when stdin is not a terminal, approve refuses (exit 2) instead of guessing.",
        ),
    ] = False,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """Approve the canary revision as yourself; the admission webhook verifies and records who you are.

    Shows what you approve first (the one-line template diff, change record, author) and asks."""
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        obj = actions.get_rollout(kube, ns, name)
        rev = actions.approval_revision(obj, revision)
        try:
            report = actions.change_report(kube, obj)
            summary, record, author = report.summary, report.change_record, report.author
            template_rev = report.canary_revision
        except actions.CommandError as exc:
            summary, record, author, template_rev = f"unknown: {exc.message}", None, None, None
        out.print(Text(f"Approving revision {rev} of {ns}/{name}", style="bold"), soft_wrap=True)
        out.print(Text(f"  change:        {summary}"), soft_wrap=True)
        out.print(Text(f"  change record: {record or '- (none given)'}"), soft_wrap=True)
        out.print(Text(f"  author:        {author or '-'}"), soft_wrap=True)
        if template_rev and template_rev != rev:
            err.print(Text(f"note: spec.template is revision {template_rev}; the change above is that one's",
                           style="yellow"), soft_wrap=True)
        out.print(Text(f"  full diff:     controlled-friction diff {name} -n {ns}", style="dim"), soft_wrap=True)
        if not yes:
            if not _stdin_is_terminal():
                fail("not approved: stdin is not a terminal, so nobody confirmed; pass --yes to approve "
                     "without a prompt", 2)
            if not typer.confirm(f"Approve revision {rev} as yourself?", default=False):
                fail("not approved", 1)
        actions.approve(kube, ns, name, rev)
    out.print(
        Text(
            f"approval for revision {rev} of {ns}/{name} submitted; "
            "the admission webhook records it under your identity"
        ),
        soft_wrap=True,
    )


def kubeconfig_user(kubeconfig: str | None, context: str | None) -> tuple[str, str | None]:
    """The user and context name of the chosen kubeconfig context (what the dashboard acts as)."""
    try:
        contexts, active = list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, TypeError):
        return "in-cluster service account", None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    chosen = chosen or {}
    return str((chosen.get("context") or {}).get("user") or "unknown user"), chosen.get("name")


@app.command()
def dashboard(
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Show only this namespace (default: every namespace).")
    ] = None,
    address: Annotated[str, typer.Option("--address", help="Address to listen on; keep it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8090,
    prometheus_url: Annotated[
        str | None,
        typer.Option("--prometheus-url", help="Prometheus as reachable from here, for the plots (default: the "
                     "Rollout's or policy's address, else $CF_PROMETHEUS_URL)."),
    ] = None,
) -> None:
    """A local web UI: Rollouts, step timeline, approvals, template diff, live plots, and actions.

    Every read and write is made with your kubeconfig's credentials, so approvals are verified by the
    admission webhook exactly like `kubectl annotate`."""
    from controlled_friction.dashboard.server import Dashboard, serve

    if not 0 < port <= 65535:
        raise typer.BadParameter(f"{port} is not a port number", param_hint="--port")
    with reported_errors():
        kube = connect(kubeconfig, context)
    user, ctx_name = kubeconfig_user(kubeconfig, context)
    if address not in ("127.0.0.1", "localhost", "::1"):
        err.print(Text(f"warning: listening on {address}: anyone who reaches it acts as {user}", style="yellow"))
    dash = Dashboard(kube=kube, user=user, context=ctx_name, namespace=namespace, prometheus_url=prometheus_url)

    def ready(url: str) -> None:
        out.print(Text(f"dashboard for {user} at {url} (Ctrl-C to stop)"), soft_wrap=True)

    try:
        serve(dash, address, port, ready)
    except OSError as exc:
        fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}")


@app.command("approve-delete")
def approve_delete(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """Approve deleting a Rollout whose FrictionPolicy requires it; the requester's own never counts."""
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        uid = actions.approve_delete(kube, ns, name)
    out.print(
        Text(
            f"approval to delete {ns}/{name} (uid {uid}) recorded under your identity; it counts for a deletion "
            "requested by someone else, until the policy's expiry",
        ),
        soft_wrap=True,
    )


def _action(
    action: actions.Action, name: str, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    with reported_errors():
        kube, ns = _target(kubeconfig, context, namespace)
        before = actions.request_action(kube, ns, name, action)
    out.print(
        Text(f"{action} requested for {ns}/{name}; the operator handles it at its next reconcile"), soft_wrap=True
    )
    hint = actions.action_hint(before, action)
    if hint:
        err.print(Text(hint, style="yellow"), soft_wrap=True)


@app.command()
def promote(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """End an untimed pause (one-shot). Approval gates, bakes and analysis still apply."""
    _action("promote", name, kubeconfig, context, namespace)


@app.command()
def abort(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """Roll the canary back now: weight 0, stable untouched (one-shot)."""
    _action("abort", name, kubeconfig, context, namespace)


@app.command()
def retry(
    name: RolloutName,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    namespace: Namespace = None,
) -> None:
    """Run a rolled-back revision again from the first step (one-shot)."""
    _action("retry", name, kubeconfig, context, namespace)


if __name__ == "__main__":  # pragma: no cover
    app()
