"""End-to-end: the dashboard in a real browser (Debian's chromium, driven by playwright) against the
sandbox, started as a process with a sandbox user's kubeconfig, like a person would.

carol (the author) and alice (a senior engineer) each run their own dashboard. The list shows the
canary at its gate; carol's approve button gets the admission webhook's refusal, shown verbatim;
alice's records an approval under her name; the plots have points for both tracks; a rollback made
from outside shows up without a reload. A screenshot of the Rollout page goes to docs/dashboard.png.

Never `playwright install`: the browser is /usr/bin/chromium (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlled_friction import names
from controlled_friction.cli import actions
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess
from controlled_friction.template_diff import ANN_CHANGE_RECORD

from .rollouts import ERRORS, admin, apply_as, kubectl_as, revision, rollout, status, wait_phase
from .waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GATED = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}]
# orders per request vs stable, and the service's order rate vs its pre-rollout baseline: both plotted
ORDERS = {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.5, "maxBaselineDrop": 0.5}
RECORD = "SHOP-142 https://tickets.example/SHOP-142: checkout 2.5.0, debug logging for the payment retry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DashboardProcess:
    """`controlled-friction dashboard` as `user`, in its own process."""

    def __init__(self, user: str, sandbox: SandboxInfo, log_dir: Path) -> None:
        self.user = user
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = (log_dir / f"dashboard-{user}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlled_friction.cli.main", "dashboard",
             "--kubeconfig", str(cluster.kubeconfig_path(user)), "--port", str(self.port),
             "--prometheus-url", sandbox.prometheus_url],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"dashboard exited: see {self.log.name}"
            with urllib.request.urlopen(f"{self.url}api/whoami", timeout=2) as rsp:
                return dict(json.load(rsp))

        try:
            who = wait_for(ready, 120, message=f"dashboard of {user}")  # a loaded machine starts Python slowly
            assert who["user"] == user
        except BaseException:
            self.stop()  # never leave a dashboard running behind a failed start
            raise

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def dashboards(sandbox: SandboxInfo) -> Iterator[dict[str, DashboardProcess]]:
    started: dict[str, DashboardProcess] = {}
    log_dir = sandbox.state_dir / "logs"
    try:
        for user in ("carol", "alice"):
            started[user] = DashboardProcess(user, sandbox, log_dir)
        yield started
    finally:
        for d in started.values():
            d.stop()


def _cli(user: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "controlled_friction.cli.main", *args,
         "--kubeconfig", str(cluster.kubeconfig_path(user))],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT, env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _release(ns: str, image: str, log_level: str) -> dict[str, Any]:
    obj = rollout(ns, image, GATED, critical=True, metrics=[ERRORS, ORDERS])
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "LOG_LEVEL", "value": log_level},
                                                               {"name": "REGION", "value": "eu-west-1"}]
    obj["metadata"]["annotations"] = {ANN_CHANGE_RECORD: RECORD}
    return obj


def test_dashboard_in_a_real_browser(live_operator: OperatorProcess, namespace: str,
                                     dashboards: dict[str, DashboardProcess], browser: Any) -> None:
    kube = admin()
    v1 = _release(namespace, "shop/checkout:2.4.1", "info")
    apply_as("carol", v1)
    wait_phase(kube, namespace, "Healthy", revision_=revision(v1))
    v2 = _release(namespace, "shop/checkout:2.5.0", "debug")
    apply_as("carol", v2)  # carol is the author of v2
    wait_phase(kube, namespace, "AwaitingApproval", timeout=90)
    rev = revision(v2)
    errors: list[str] = []

    def page_for(user: str) -> Any:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        page.on("pageerror", lambda e: errors.append(f"{user}: {e}"))
        return page

    # ---- the list shows the canary at its gate (filtered to this namespace)
    alice = page_for("alice")
    alice.goto(f"{dashboards['alice'].url}#/?namespace={namespace}")
    row = alice.locator(f"[data-testid=rollout-row][data-namespace='{namespace}'][data-name=checkout]")
    row.wait_for()
    assert row.get_attribute("data-phase") == "AwaitingApproval"
    assert row.locator("[data-testid=approvals]").inner_text() == "0/2"
    assert "acting as alice" in alice.locator("[data-testid=whoami]").inner_text()

    # ---- carol, the author: the webhook's refusal is shown verbatim
    carol = page_for("carol")
    carol.goto(f"{dashboards['carol'].url}#/r/{namespace}/checkout")
    summary = carol.locator("[data-testid=diff-summary]")
    summary.filter(has_text="image checkout:2.4.1 → 2.5.0").wait_for()
    assert summary.inner_text() == "image checkout:2.4.1 → 2.5.0, 1 env var changed"
    assert carol.locator("[data-testid=change-record]").inner_text() == RECORD
    assert carol.locator("[data-testid=author]").inner_text() == "carol"
    # the terminal says the same thing
    cli = _cli("alice", "diff", "checkout", "-n", namespace, "-o", "json")
    assert json.loads(cli)["summary"] == summary.inner_text() and json.loads(cli)["changeRecord"] == RECORD
    assert "Change " in _cli("alice", "status", "checkout", "-n", namespace) and summary.inner_text() in _cli(
        "alice", "status", "checkout", "-n", namespace)
    carol.click("#btn-approve")
    assert rev in carol.locator("[data-testid=confirm-text]").inner_text()
    carol.click("[data-testid=confirm-yes]")
    refusal = carol.locator("[data-testid=refusal]")
    refusal.wait_for()
    shown = refusal.inner_text()
    code, kubectl_says = kubectl_as("carol", "annotate", "rollout", "checkout", "-n", namespace,
                                    f"{names.ANN_APPROVE}={rev}")
    assert code != 0 and shown in kubectl_says, (shown, kubectl_says)  # the same words kubectl prints
    assert "denied the request" in shown and "author" in shown
    assert status(kube, namespace).get("approvals") in (None, [])

    # ---- alice, with the keyboard: the approval is recorded under her name
    alice.goto(f"{dashboards['alice'].url}#/r/{namespace}/checkout")
    alice.locator("[data-testid=phase]").filter(has_text="AwaitingApproval").wait_for()
    alice.keyboard.press("a")
    alice.locator("#confirm[open]").wait_for()
    assert f"Approve revision {rev} of {namespace}/checkout as alice?" == alice.locator(
        "[data-testid=confirm-text]").inner_text()
    alice.keyboard.press("y")
    alice.locator("[data-testid=action-result].ok").wait_for()
    st = wait_for(lambda: (s := status(kube, namespace)).get("approvalsSummary") == "1/2" and s, 30,
                  message="alice's approval counted")
    assert [a["user"] for a in st["approvals"]] == ["alice"]
    alice.locator("[data-testid=approver]").filter(has_text="alice").wait_for()
    alice.locator("[data-testid=approvals-more]").filter(has_text="1 more needed from senior-engineers").wait_for()

    # ---- the plots have points for both tracks (canary at 20% next to stable)
    plot = alice.locator("[data-testid=plot][data-metric=errors]").first
    plot.wait_for()
    wait_for(lambda: int(plot.get_attribute("data-points-canary") or 0) > 0
             and int(plot.get_attribute("data-points-stable") or 0) > 0, 90, interval=1,
             message="points for canary and stable in the errors plot")
    orders = alice.locator("[data-testid=plot][data-metric=orders]").first
    wait_for(lambda: int(orders.get_attribute("data-points-canary") or 0) > 0, 30, interval=1,
             message="points in the orders plot")
    alice.wait_for_timeout(5500)  # one more plot refresh, so the picture has a few points more
    SCREENSHOT.parent.mkdir(exist_ok=True)
    alice.screenshot(path=str(SCREENSHOT), full_page=True)

    # ---- a rollback made elsewhere shows up without a reload
    alice.evaluate("window.__notReloaded = true")
    actions.request_action(kube, namespace, "checkout", "abort")
    alice.locator("[data-testid=phase]").filter(has_text="RolledBack").wait_for(timeout=60_000)
    assert alice.evaluate("window.__notReloaded === true")
    alice.locator("#events-body tr").filter(has_text="RollbackTriggered").first.wait_for()
    assert alice.locator("#btn-retry").is_enabled()
    assert errors == []
