"""A real, local Kubernetes control plane on 127.0.0.1 for development and end-to-end tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake Nodes whose Pods become
Running and Ready without a kubelet), the traffic simulator and Prometheus, each a background
process with a PID file and a log in the state directory (see `layout`). No containers, no mocks.

Python API: `up()`, `down()`, `status()`, `info()`, `kubeconfig_path(user)`, and
`start_component(name)` / `stop_component(name)` for fault-injection tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlled_friction.names import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT
from controlled_friction.sandbox import (
    bootstrap,
    components,
    gateway_api,
    health,
    identities,
    kubeconfig,
    layout,
    pki,
    realnode,
)
from controlled_friction.sandbox.build import KUBERNETES_VERSION, binary, ensure_built
from controlled_friction.sandbox.components import Component
from controlled_friction.sandbox.kwok_stages import stages_yaml
from controlled_friction.sandbox.layout import Paths
from controlled_friction.sandbox.procs import ProcRecord, exited_early, is_ours, spawn, terminate

OPERATOR_TOKEN_DURATION = "8760h"
NODES_READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class SandboxInfo:
    apiserver_url: str
    prometheus_url: str
    simulator_url: str
    admin_kubeconfig: Path
    state_dir: Path
    kubernetes_version: str = KUBERNETES_VERSION
    ports: dict[str, int] = field(default_factory=dict)


def _say(msg: str, quiet: bool) -> None:
    # Progress goes to stderr so stdout stays clean for `sandbox kubeconfig` and friends.
    if not quiet:
        print(f"[sandbox] {msg}", file=sys.stderr, flush=True)


def info() -> SandboxInfo:
    """Addresses of the sandbox (whether or not it is running)."""
    p = layout.paths()
    host = layout.HOST
    return SandboxInfo(
        apiserver_url=f"https://{host}:{layout.port('apiserver')}",
        prometheus_url=f"http://{host}:{layout.port('prometheus')}",
        simulator_url=f"http://{host}:{layout.port('simulator')}",
        admin_kubeconfig=p.admin_kubeconfig,
        state_dir=p.root,
        ports={name: layout.port(name) for name in layout.PORT_OFFSETS},
    )


def _component(name: str, p: Paths) -> Component:
    for c in components.all_components(p):
        if c.name == name:
            return c
    raise ValueError(f"unknown sandbox component {name!r}; known: {', '.join(components.NAMES)}")


def simulator_available() -> bool:
    return importlib.util.find_spec(components.SIMULATOR_MODULE) is not None


def _record(name: str, p: Paths) -> ProcRecord | None:
    rec = ProcRecord.load(p.pid_file(name))
    return rec if rec is not None and is_ours(rec) else None


# --- preparing the state directory -------------------------------------------------------------


def _prepare(p: Paths) -> None:
    """Config, keys, tokens and kubeconfigs: create what is missing, keep what exists."""
    for d in (p.root, p.run, p.logs, p.kubeconfigs, p.certs_scratch):
        d.mkdir(parents=True, exist_ok=True)
    if not p.marker.exists():
        p.marker.write_text(json.dumps({"created": time.time(), "kubernetes": KUBERNETES_VERSION}))
    pki.ensure_pki(p)
    tokens = identities.ensure_tokens(p.tokens)
    admin = kubeconfig.render(info().apiserver_url, p.ca_cert.read_bytes(), identities.ADMIN_USER,
                              tokens[identities.ADMIN_USER])
    _write_if_changed(p.admin_kubeconfig, admin, private=True)
    _write_if_changed(p.kwok_config, stages_yaml())
    _write_if_changed(p.prometheus_config, components.prometheus_config())


def _write_if_changed(path: Path, text: str, private: bool = False) -> None:
    if path.exists() and path.read_text() == text:
        return
    if private:
        kubeconfig.write(path, text)
    else:
        path.write_text(text)


# --- starting and stopping ---------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((layout.HOST, port))
        except OSError:
            return False
    return True


def _start(c: Component, p: Paths, quiet: bool) -> ProcRecord:
    rec = _record(c.name, p)
    if rec is not None:
        return rec
    if not _port_free(c.port):
        # Otherwise a stranger on our port could pass our health probe.
        raise RuntimeError(f"{layout.HOST}:{c.port} (for {c.name}) is taken by another process; "
                           f"stop it or choose other ports with {layout.ENV_PORT_BASE}")
    _say(f"starting {c.name} on {layout.HOST}:{c.port} (log: {p.log_file(c.name)})", quiet)
    return spawn(c.argv, p.log_file(c.name), p.pid_file(c.name), env=c.env)


def _wait_healthy(c: Component, rec: ProcRecord, p: Paths, quiet: bool) -> None:
    t0 = time.monotonic()
    deadline = t0 + c.startup_timeout
    while True:
        if not is_ours(rec):
            code = exited_early(rec)
            raise RuntimeError(f"{c.name} exited (code {code}); last log lines:\n{_tail(p.log_file(c.name))}")
        if health.probe(c, p.ca_cert):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{c.name} not healthy at {c.health_url} after {c.startup_timeout:.0f}s; "
                f"last log lines:\n{_tail(p.log_file(c.name))}"
            )
        time.sleep(0.25)
    _say(f"{c.name} healthy (pid {rec.pid}, {time.monotonic() - t0:.1f}s)", quiet)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ensure(names: list[str], p: Paths, quiet: bool) -> None:
    """Start the named components together, then wait for each to be healthy."""
    started = [(c, _start(c, p, quiet)) for c in (_component(n, p) for n in names)]
    for c, rec in started:
        _wait_healthy(c, rec, p, quiet)


def start_component(name: str, quiet: bool = True) -> None:
    """Start one component (if not running) and wait until it is healthy. For fault tests."""
    p = layout.paths()
    _ensure([name], p, quiet)


def stop_component(name: str, quiet: bool = True) -> bool:
    """Stop one component we started; False if it was not running. For fault tests."""
    p = layout.paths()
    _component(name, p)  # validate the name
    rec = ProcRecord.load(p.pid_file(name))
    stopped = rec is not None and terminate(rec)
    p.pid_file(name).unlink(missing_ok=True)
    if stopped:
        _say(f"stopped {name} (pid {rec.pid if rec else '?'})", quiet)
    return stopped


# --- talking to the API server -----------------------------------------------------------------


def kubectl(*args: str, kubeconfig_file: Path | None = None, stdin: str | None = None,
            check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the sandbox's own kubectl (admin identity unless told otherwise)."""
    cfg = kubeconfig_file or layout.paths().admin_kubeconfig
    proc = subprocess.run(
        [str(binary("kubectl")), f"--kubeconfig={cfg}", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _bootstrap(p: Paths, quiet: bool) -> None:
    """Apply RBAC, the operator namespace/ServiceAccount and the fake Nodes (skipped if unchanged)."""
    text = yaml.safe_dump_all(bootstrap.all_manifests(), sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if p.bootstrap_stamp.exists() and p.bootstrap_stamp.read_text() == digest:
        return
    _say("applying sandbox RBAC, operator ServiceAccount and kwok Nodes", quiet)
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=cf-sandbox", "-f", "-",
            stdin=text)
    p.bootstrap_stamp.write_text(digest)


def _wait_nodes_ready(quiet: bool) -> None:
    deadline = time.monotonic() + NODES_READY_TIMEOUT
    names = list(bootstrap.NODE_NAMES)
    while True:
        proc = kubectl("get", "nodes", "-o", "json", check=False)
        ready: set[str] = set()
        if proc.returncode == 0:
            for node in json.loads(proc.stdout)["items"]:
                conds = node.get("status", {}).get("conditions", [])
                taints = node.get("spec", {}).get("taints", [])
                is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
                # The node lifecycle controller lifts its not-ready taint a moment after Ready.
                if is_ready and not any(t.get("effect") == "NoSchedule" for t in taints):
                    ready.add(node["metadata"]["name"])
        if all(n in ready for n in names):
            _say(f"nodes ready: {', '.join(names)}", quiet)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"kwok nodes not Ready and schedulable after {NODES_READY_TIMEOUT:.0f}s; "
                               f"ready: {sorted(ready)}; see {layout.paths().log_file('kwok')}")
        time.sleep(0.5)


# --- public API --------------------------------------------------------------------------------


def up(quiet: bool = False, real_node: bool = False) -> SandboxInfo:
    """Bring the sandbox up (idempotent) and return where everything is.

    `real_node` also starts one kubelet + containerd node next to the kwok nodes (`realnode`).
    """
    p = layout.paths()
    expected = [n for n in components.NAMES if n != "simulator" or simulator_available()]
    current = status()
    if all(current[n]["healthy"] for n in expected):
        _say(f"sandbox already up ({p.root})", quiet)
        if real_node:
            realnode.up(p, quiet)
        return info()
    t_build = time.monotonic()
    _say("ensuring binaries are built (the first build takes many minutes)", quiet)
    ensure_built()
    gateway_api.ensure_manifests()
    _say(f"binaries ready ({time.monotonic() - t_build:.0f}s)", quiet)
    if not components.PROMETHEUS_BIN.exists():
        raise RuntimeError(f"{components.PROMETHEUS_BIN} not found: `apt-get install prometheus`")
    t0 = time.monotonic()
    _prepare(p)
    _ensure(["etcd"], p, quiet)
    _ensure(["kube-apiserver"], p, quiet)
    _bootstrap(p, quiet)
    gateway_api.install(kubectl, p.root / "gateway-api.sha256", say=lambda msg: _say(msg, quiet))
    rest = ["kube-controller-manager", "kube-scheduler", "kwok", "prometheus"]
    if simulator_available():
        rest.insert(3, "simulator")
    else:
        _say(f"{components.SIMULATOR_MODULE} not found: traffic simulator not started", quiet)
    _ensure(rest, p, quiet)
    _wait_nodes_ready(quiet)
    if real_node:
        realnode.up(p, quiet)
    _say(f"sandbox up in {time.monotonic() - t0:.1f}s; admin kubeconfig: {p.admin_kubeconfig}", quiet)
    return info()


def down(quiet: bool = False) -> None:
    """Stop exactly the processes the sandbox started, then delete its state directory."""
    p = layout.paths()
    realnode.down(p, quiet)  # first: it unmounts pod volumes under the state directory
    for name in reversed(components.NAMES):
        rec = ProcRecord.load(p.pid_file(name))
        if rec is None:
            continue
        if terminate(rec):
            _say(f"stopped {name} (pid {rec.pid})", quiet)
        else:
            _say(f"{name}: pid {rec.pid} no longer runs it; nothing to stop", quiet)
        p.pid_file(name).unlink(missing_ok=True)
    if p.marker.exists():
        shutil.rmtree(p.root)
        _say(f"removed {p.root}", quiet)
    elif p.root.exists():
        _say(f"{p.root} has no sandbox marker; left in place", quiet)


def status() -> dict[str, dict[str, Any]]:
    """Per component: pid (or None), running, healthy, address, port, url and log path."""
    p = layout.paths()
    out: dict[str, dict[str, Any]] = {}
    for c in components.all_components(p):
        rec = _record(c.name, p)
        out[c.name] = {
            "pid": rec.pid if rec else None,
            "running": rec is not None,
            "healthy": rec is not None and health.probe(c, p.ca_cert),
            "address": f"{layout.HOST}:{c.port}",
            "port": c.port,
            "url": c.health_url,
            "log": str(p.log_file(c.name)),
        }
    if not simulator_available():
        out["simulator"]["note"] = f"{components.SIMULATOR_MODULE} not installed"
    if realnode.running(p):  # only when `up --real-node` started it: a kwok-only sandbox is complete
        out.update(realnode.status(p))
    return out


def kubeconfig_path(user: str) -> Path:
    """Write a kubeconfig acting as `user` into the state directory and return its path.

    `user` is one of the contract identities (alice, bob, carol, dave, mallory), `admin`, or
    `operator` (the operator's ServiceAccount, via a fresh long-lived TokenRequest token).
    """
    p = layout.paths()
    if not p.tokens.exists() or not p.ca_cert.exists():
        raise RuntimeError(f"no sandbox state in {p.root}; run `controlled-friction sandbox up` first")
    if user in ("admin", identities.ADMIN_USER):
        return p.admin_kubeconfig
    server, ca = info().apiserver_url, p.ca_cert.read_bytes()
    if user == identities.OPERATOR_USER:
        token = kubectl("create", "token", OPERATOR_SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                        f"--duration={OPERATOR_TOKEN_DURATION}").stdout.strip()
        text = kubeconfig.render(server, ca, user, token, namespace=OPERATOR_NAMESPACE)
    elif user in identities.USERS:
        text = kubeconfig.render(server, ca, user, identities.read_tokens(p.tokens)[user])
    else:
        known = ", ".join([*identities.USERS, "admin", identities.OPERATOR_USER])
        raise ValueError(f"unknown sandbox user {user!r}; known: {known}")
    return kubeconfig.write(p.kubeconfigs / f"{user}.kubeconfig", text)
