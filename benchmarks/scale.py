"""Can one operator hold 100, 335 and 1,000 Rollouts? (issue 10, "Benchmark")

    export CF_SANDBOX_PORT_BASE=20440 CF_SANDBOX_DIR=/tmp/cf-sandbox-scale   # an isolated sandbox
    .venv/bin/python -m benchmarks.scale [--sizes 100,335,1000] [--json PATH] [--timeout 900]
        [--idle-seconds 60] [--approval-rate 50] [--approval-seconds 20] [--namespaces 10]
        [--compare benchmarks/results/scale-before.json] [--keep-sandbox]

Against the real sandbox (`cluster.up()`), with the operator from this tree as separate processes
(`OperatorProcess`, its ServiceAccount identity, the webhooks on 127.0.0.1): the controller, and
admission in a process of its own (`--webhooks separate`, the default, as the chart runs it by
default with `webhook.separateDeployment`) or in the controller's (`--webhooks same`).
For each N it creates N plain Rollouts over ~10 namespaces — 2 replicas, steps `setWeight: 50` then
`pause: 30s`, one `errorRatio` metric (maxRatio 0.05) every 10 s — and measures:

1. **create**: time until every first revision is Healthy (and each Rollout's time from its create);
2. **idle** (`--idle-seconds`, all Healthy, nothing changing): the operator's CPU (cores, utime+stime
   of its process tree from /proc) and RSS, its API requests/s by verb, Prometheus queries, reconciles;
3. **floor** (skip with `--no-floor`): N plain Deployments of the same shape, no operator involved,
   rolled out at once by the Deployment controller alone, on the calm sandbox; their pods are gone
   before the wave. What the sandbox itself can do: a canary wave costs at least two such pod changes
   per Rollout;
4. **wave**: every template changed at once (a canary each, the 30 s plan): lag beyond the plan
   (template change to Healthy, minus 30 s) p50/p95/max, the time to the first step, reconcile latency
   p50/p99, Prometheus queries per 10 s analysis interval at the plateau of canaries in analysis;
   while the canaries bake, **approvals** arrive as alice at `--approval-rate`/s for
   `--approval-seconds` (each request timed client-side, plus the API server's webhook histogram).

Where the figures come from, so the same script measures any operator code: the operator's API
requests from the API server's audit log, filtered by the operator's user (the sandbox starts the API
server with an audit policy logging that user only, see `components.ENV_AUDIT_POLICY`; its user
agents are listed too: kopf's and the Kubernetes client's); all clients' requests from
`apiserver_request_total`; webhook latency from `apiserver_admission_webhook_admission_duration_seconds`;
Prometheus queries from Prometheus's own `prometheus_http_requests_total`/`prometheus_engine_query_
duration_seconds_count` (minus the benchmark's own); reconcile latency from the operator's
`controlled_friction_reconcile_duration_seconds` histogram; CPU of every sandbox process from /proc
next to the operator's, so the bottleneck is visible; and the simulator's scrape health
(`up`, `scrape_duration_seconds`, /api/v1/targets) for every phase: a phase in which the simulator's
target went down says so loudly, because then it measured the simulator, not the operator.

Every phase is bounded by `--timeout`; the benchmark never asserts timings. It deletes what it
created (Rollouts while the operator still runs, so kopf's finalizers go; then the namespaces), and
brings the sandbox down if it started it (unless `--keep-sandbox`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import probes
from benchmarks.probes import CpuWindow, DeploymentRow, DeploymentWatch, RolloutWatch, Samples, summary
from controlled_friction import names
from controlled_friction.revision import revision_of
from controlled_friction.sandbox import cluster, components, layout
from controlled_friction.sandbox.operator_proc import OperatorProcess, install_crds, remove_webhook_configurations
from controlled_friction.sandbox.procs import ProcRecord, is_ours

LABEL = "cf-scale"
SELECTOR = f"{LABEL}=1"
PLAN_SECONDS = 30.0
FIRST_WEIGHT = 50
TICK_SECONDS = 2.0  # the timer-driven operator's default CF_TICK_SECONDS, as deployed
HAS_TICK = "tick_seconds" in OperatorProcess.__dataclass_fields__
SAMPLE_EVERY = 2.0
MAX_IN_FLIGHT = 500  # approval requests waiting for an answer at once
APPROVAL_TIMEOUT = 35.0  # client side; the API server gives a webhook at most 30 s
COMPONENTS = ("kube-apiserver", "etcd", "kwok", "kube-controller-manager", "kube-scheduler", "simulator", "prometheus")
APISERVER_PREFIXES = ("apiserver_request_total", "apiserver_admission_webhook_admission_duration_seconds")
PROMETHEUS_PREFIXES = ("prometheus_http_requests_total", "prometheus_engine_query_duration_seconds_count")
RECONCILE = "controlled_friction_reconcile_duration_seconds"
QUEUE = "controlled_friction_reconcile_queue_seconds"
KUBE_REQUESTS = "controlled_friction_kube_request_duration_seconds"
ADMISSION = "controlled_friction_admission_duration_seconds"
# The issue's figures (one operator, 200 Rollouts, same plan): (value, rollouts, per-Rollout comparable).
ISSUE_200 = {
    "idle_operator_cpu_cores": (0.65, 200, True),
    "idle_operator_api_rps": (175.0, 200, True),
    "wave_lag_p50_s": (137.0, 200, False),
    "wave_lag_p95_s": (214.0, 200, False),
    "wave_reconcile_p99_s": (2.5, 200, False),
}
TARGETS_1000 = {
    "idle_operator_cpu_cores": "<= 0.05",
    "idle_operator_rss_mb_max": "<= 300",
    "wave_lag_p95_s": "<= 10",
    "approvals_client_p99_ms": "<= 200",
    "wave_prometheus_queries_per_interval": "independent of N",
}


def say(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- objects


def template(name: str, version: int) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": f"bench/{name}:{version}"}]},
    }


def rollout(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: "1"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, 1),
            "strategy": {"canary": {"steps": [{"setWeight": FIRST_WEIGHT}, {"pause": {"duration": "30s"}}]}},
            "analysis": {"interval": "10s", "metrics": [{"name": "errors", "kind": "errorRatio", "maxRatio": 0.05}]},
        },
    }


def api_client(user: str, pool: int = 32) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig_path(user)), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


@dataclass
class Call:
    """One timed API request: when it returned (monotonic), how long it took, its HTTP status."""

    done: float
    seconds: float
    status: int
    reason: str = ""


def timed(fn: Callable[[], Any]) -> Call:
    from kubernetes.client import ApiException

    t0 = time.monotonic()
    try:
        rsp = fn()
        rsp.read() if hasattr(rsp, "read") else None
        status, reason = 200, ""
    except ApiException as exc:
        status = int(exc.status or 0)
        try:
            reason = str(json.loads(exc.body or "{}").get("message", ""))[:160]
        except ValueError:
            reason = str(exc.body)[:160]
    except Exception as exc:  # connection reset, timeout: part of what is measured
        status, reason = 0, f"{type(exc).__name__}: {exc}"[:160]
    t1 = time.monotonic()
    return Call(t1, t1 - t0, status, reason)


def call_summary(calls: Sequence[Call]) -> dict[str, Any]:
    """Latencies of the requests sent (status -1: not sent, the phase's time was up)."""
    not_sent = sum(1 for c in calls if c.status == -1)
    calls = [c for c in calls if c.status != -1]
    ok = [c.seconds for c in calls if 200 <= c.status < 300]
    refused = [c.seconds for c in calls if 400 <= c.status < 500]
    reasons = Counter(_reason(c.reason) for c in calls if c.status // 100 != 2)
    return {
        "n": len(calls),
        "by_status": dict(Counter(str(c.status) for c in calls)),
        "all_ms": _ms(summary([c.seconds for c in calls])),
        "accepted_ms": _ms(summary(ok)),
        "refused_ms": _ms(summary(refused)),
        "top_reasons": reasons.most_common(4),
        "not_sent": not_sent,
    }


def _reason(message: str) -> str:
    """`admission webhook "x" denied the request: you already approved ...` -> `x: you already approved ...`."""
    hook, sep, why = message.partition(" denied the request: ")
    if sep:
        name = hook.split('"')[1] if '"' in hook else hook
        return f"{name}: {why[:90]}"
    return message[:100]


def _ms(s: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {k: (round(float(v) * 1000, 1) if k != "n" and v is not None else v) for k, v in s.items()}


# ---------------------------------------------------------------- context


@dataclass
class Bench:
    args: argparse.Namespace
    info: cluster.SandboxInfo
    admin_token: str
    audit: probes.AuditTail | None
    admin: Any = None
    alice: Any = None
    own_prom_queries: int = 0
    warnings: list[str] = field(default_factory=list)
    webhook_pid: int | None = None  # the admission process, when it runs apart from the controller
    webhook_metrics_port: int | None = None  # its /metrics
    floor_op: OperatorProcess | None = None  # whose CPU the floor phase samples (idle there)

    def warn(self, msg: str) -> None:
        say("WARNING: " + msg)
        self.warnings.append(msg)

    def component_pids(self) -> dict[str, int]:
        p = layout.paths()
        out: dict[str, int] = {}
        for name in COMPONENTS:
            rec = ProcRecord.load(p.pid_file(name))
            if rec is not None and is_ours(rec):
                out[name] = rec.pid
        return out

    def apiserver_metrics(self) -> Samples:
        return probes.scrape(f"{self.info.apiserver_url}/metrics", APISERVER_PREFIXES, self.admin_token,
                             str(layout.paths().ca_cert))

    def prometheus_metrics(self) -> Samples:
        return probes.scrape(f"{self.info.prometheus_url}/metrics", PROMETHEUS_PREFIXES)

    def prom_query(self, q: str) -> list[dict[str, Any]]:
        import urllib.parse

        self.own_prom_queries += 1
        text = probes.fetch_text(f"{self.info.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        return list(json.loads(text)["data"]["result"])

    def prom_value(self, q: str) -> float | None:
        try:
            res = self.prom_query(q)
        except Exception:
            return None
        return float(res[0]["value"][1]) if res else None


def prom_query_count(s: Samples) -> float:
    return sum(v for (n, lab), v in s.items()
               if n == "prometheus_http_requests_total" and dict(lab).get("handler") in ("/api/v1/query",
                                                                                        "/api/v1/query_range"))


def engine_query_count(s: Samples) -> float:
    return sum(v for (n, lab), v in s.items()
               if n == "prometheus_engine_query_duration_seconds_count" and dict(lab).get("slice") == "inner_eval")


class Phase:
    """Snapshots at the start and end of a phase, and samples every 2 s in between."""

    def __init__(self, bench: Bench, name: str, op: OperatorProcess, watch: RolloutWatch | None = None,
                 sample_watch: bool = False) -> None:
        self.bench, self.name, self.op, self.watch = bench, name, op, watch
        self.sample_watch = sample_watch
        assert op.proc is not None
        self.op_pid = op.proc.pid
        roots = {"operator": self.op_pid, **bench.component_pids(), "benchmark": os.getpid()}
        if bench.webhook_pid is not None:
            roots["webhooks"] = bench.webhook_pid
        self.epoch0, self.mono0 = time.time(), time.monotonic()
        self.own0 = bench.own_prom_queries
        self.api0, self.prom0, self.op0 = self._safe(bench.apiserver_metrics), self._safe(bench.prometheus_metrics), \
            self._safe(self._operator_metrics)
        self.cpu = CpuWindow(roots)
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name=f"phase-{name}")
        self._thread.start()

    def _operator_metrics(self) -> Samples:
        out = probes.scrape(f"http://127.0.0.1:{self.bench.info.ports['operator_health']}/metrics",
                            (RECONCILE, ADMISSION, QUEUE, KUBE_REQUESTS))
        if self.bench.webhook_metrics_port is not None:  # admission in a process of its own
            out = {k: v for k, v in out.items() if not k[0].startswith(ADMISSION)}
            out.update(probes.scrape(f"http://127.0.0.1:{self.bench.webhook_metrics_port}/metrics", (ADMISSION,)))
        return out

    def _safe(self, fn: Callable[[], Samples]) -> Samples:
        try:
            return fn()
        except Exception as exc:
            self.bench.warn(f"{self.name}: scrape failed: {type(exc).__name__}: {exc}")
            return {}

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            row: dict[str, Any] = {"t": time.monotonic(), "rss": probes.tree_rss(self.op_pid)}
            if self.sample_watch:
                try:
                    row["queries"] = prom_query_count(self.bench.prometheus_metrics())
                except Exception:
                    row["queries"] = None
                if self.watch is not None:
                    row["in_analysis"] = sum(1 for s in self.watch.snapshot().values() if _in_analysis(s.last))
            self.samples.append(row)

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=10)
        cpu = self.cpu.finish()
        epoch1, seconds = time.time(), time.monotonic() - self.mono0
        api1, prom1, op1 = self._safe(self.bench.apiserver_metrics), self._safe(self.bench.prometheus_metrics), \
            self._safe(self._operator_metrics)
        own = self.bench.own_prom_queries - self.own0
        out: dict[str, Any] = {"seconds": round(seconds, 1), "cpu": cpu}
        rss = [r["rss"] for r in self.samples if r.get("rss")] or [probes.tree_rss(self.op_pid)]
        out["operator_rss_mb"] = {"median": round((probes.quantile(rss, 0.5) or 0) / 2**20, 1),
                                  "max": round(max(rss) / 2**20, 1)}
        # API requests: the operator's (audit log, by its user) and everybody's (apiserver_request_total).
        if self.bench.audit is not None:
            time.sleep(1.5)  # let the batch audit backend flush the last second
            win = self.bench.audit.window(int(self.epoch0) + 1, int(epoch1))
            span = max(1.0, int(epoch1) - int(self.epoch0) - 1)
            by_verb, by_agent, by_res = Counter[str](), Counter[str](), Counter[str]()
            for (verb, res, agent), n in win.items():
                by_verb[verb] += n
                by_agent[agent] += n
                by_res[f"{verb} {res}"] += n
            out["operator_api"] = {
                "rps": round(sum(win.values()) / span, 2),
                "by_verb_rps": {k: round(v / span, 2) for k, v in by_verb.most_common()},
                "by_agent_rps": {k: round(v / span, 2) for k, v in by_agent.most_common()},
                "top_rps": {k: round(v / span, 2) for k, v in by_res.most_common(8)},
            }
        all_verbs = probes.delta(api1, self.api0, "apiserver_request_total", group_by=("verb",))
        out["all_clients_api_rps_by_verb"] = {k[0]: round(v / seconds, 2) for k, v in
                                              sorted(all_verbs.items(), key=lambda kv: -kv[1]) if v > 0}
        out["all_clients_api_rps"] = round(sum(all_verbs.values()) / seconds, 2)
        # Admission webhooks, as the API server saw them.
        hooks: dict[str, Any] = {}
        for (hook,) in probes.delta(api1, self.api0, "apiserver_admission_webhook_admission_duration_seconds_count",
                                    group_by=("name",)):
            b = probes.histogram_delta(api1, self.api0, "apiserver_admission_webhook_admission_duration_seconds",
                                       {"name": hook})
            if b and b[-1][1] > 0:
                hooks[hook] = {"n": int(b[-1][1]), "p50_ms": _ms1(probes.histogram_quantile(0.5, b)),
                               "p99_ms": _ms1(probes.histogram_quantile(0.99, b))}
        out["apiserver_webhook_latency"] = hooks
        # ... and as the webhook server itself timed them (the difference is the API server's side).
        served: dict[str, Any] = {}
        for (hook,) in probes.delta(op1, self.op0, f"{ADMISSION}_count", group_by=("webhook",)):
            b = probes.histogram_delta(op1, self.op0, ADMISSION, {"webhook": hook})
            if b and b[-1][1] > 0:
                served[hook] = {"n": int(b[-1][1]), "p50_ms": _ms1(probes.histogram_quantile(0.5, b)),
                                "p99_ms": _ms1(probes.histogram_quantile(0.99, b))}
        out["server_webhook_latency"] = served
        # Reconciles, from the operator's own histogram.
        rb = probes.histogram_delta(op1, self.op0, RECONCILE)
        n_rec = rb[-1][1] if rb else 0.0
        out["reconcile"] = {
            "n": int(n_rec), "per_s": round(n_rec / seconds, 2),
            "p50_s": _r3(probes.histogram_quantile(0.5, rb)), "p99_s": _r3(probes.histogram_quantile(0.99, rb)),
            "beyond_largest_bucket": round(probes.histogram_beyond(rb), 4),
        }
        # Waiting for a worker, and the operator's API requests as it saw them (the rest of a reconcile).
        qb = probes.histogram_delta(op1, self.op0, QUEUE)
        out["queue"] = {"n": int(qb[-1][1]) if qb else 0, "p50_s": _r3(probes.histogram_quantile(0.5, qb)),
                        "p99_s": _r3(probes.histogram_quantile(0.99, qb))}
        requests_: dict[str, Any] = {}
        for verb, res in probes.delta(op1, self.op0, f"{KUBE_REQUESTS}_count", group_by=("verb", "resource")):
            b = probes.histogram_delta(op1, self.op0, KUBE_REQUESTS, {"verb": verb, "resource": res})
            if b and b[-1][1] > 0:
                requests_[f"{verb} {res}"] = {"n": int(b[-1][1]), "p50_s": _r3(probes.histogram_quantile(0.5, b)),
                                              "p99_s": _r3(probes.histogram_quantile(0.99, b))}
        out["kube_requests"] = dict(sorted(requests_.items(), key=lambda kv: -kv[1]["n"]))
        # Prometheus queries (minus the benchmark's own).
        q = max(0.0, prom_query_count(prom1) - prom_query_count(self.prom0) - own)
        eq = max(0.0, engine_query_count(prom1) - engine_query_count(self.prom0) - own)
        out["prometheus"] = {"http_queries": int(q), "engine_queries": int(eq),
                             "queries_per_s": round(q / seconds, 3), "per_10s_interval": round(q / seconds * 10, 1)}
        out["simulator_target"] = simulator_health(self.bench, seconds)
        if not out["simulator_target"]["ok"]:
            self.bench.warn(f"{self.name}: THE SIMULATOR'S PROMETHEUS TARGET WAS DOWN "
                            f"({out['simulator_target']}): this phase measured the simulator, not the operator")
        out["samples"] = self.samples
        return out


def _ms1(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _in_analysis(last: tuple[str | None, str | None, str | None, int | None]) -> bool:
    phase, stable, canary, weight = last
    return bool(canary) and canary != stable and (weight or 0) > 0 and phase in ("Progressing", "Paused")


def simulator_health(bench: Bench, seconds: float) -> dict[str, Any]:
    """Every scrape of the simulator during the last `seconds`: how many were down, how slow."""
    rng = f"[{max(2, int(seconds))}s]"
    sel = '{job="simulator"}'
    scrapes = bench.prom_value(f"count_over_time(up{sel}{rng})")
    ups = bench.prom_value(f"sum_over_time(up{sel}{rng})")
    out: dict[str, Any] = {
        "scrapes": None if scrapes is None else int(scrapes),
        "down_scrapes": None if scrapes is None or ups is None else int(scrapes - ups),
        "scrape_seconds_max": _r3(bench.prom_value(f"max_over_time(scrape_duration_seconds{sel}{rng})")),
        "scrape_seconds_avg": _r3(bench.prom_value(f"avg_over_time(scrape_duration_seconds{sel}{rng})")),
        "samples_max": bench.prom_value(f"max_over_time(scrape_samples_scraped{sel}{rng})"),
    }
    try:
        targets = json.loads(probes.fetch_text(f"{bench.info.prometheus_url}/api/v1/targets?state=active"))
        sim = [t for t in targets["data"]["activeTargets"] if t.get("labels", {}).get("job") == "simulator"]
        if sim:
            out["health_now"] = sim[0].get("health")
            out["last_error"] = sim[0].get("lastError") or ""
            out["last_scrape_seconds"] = _r3(sim[0].get("lastScrapeDuration"))
    except Exception as exc:
        out["health_now"] = f"unknown ({type(exc).__name__})"
    out["ok"] = out.get("down_scrapes") == 0 and out.get("health_now") == "up"
    return out


# ---------------------------------------------------------------- one size


def namespaces_for(n: int, count: int) -> list[str]:
    return [f"cf-scale-{n}-{i}" for i in range(max(1, min(count, n)))]


def create_namespaces(bench: Bench, nss: Sequence[str], timeout: float) -> None:
    from kubernetes import client

    core = client.CoreV1Api(bench.admin)
    for ns in nss:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels={LABEL: "1"})))
    deadline = time.monotonic() + timeout
    for ns in nss:  # pods are refused until the namespace's default ServiceAccount exists
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", ns)
                break
            except client.ApiException:
                time.sleep(0.5)


def wait_until(what: str, done: Callable[[], tuple[int, int]], timeout: float, every: float = 15.0) -> bool:
    """Poll `done() -> (ok, total)` each second until ok == total or the timeout; print progress."""
    t0 = time.monotonic()
    last = t0
    while True:
        ok, total = done()
        if ok >= total:
            return True
        now = time.monotonic()
        if now - t0 > timeout:
            say(f"{what}: timed out after {timeout:.0f}s with {ok}/{total}")
            return False
        if now - last >= every:
            say(f"{what}: {ok}/{total} after {now - t0:.0f}s")
            last = now
        time.sleep(1.0)


def phase_counts(watch: RolloutWatch, keys: Sequence[tuple[str, str]]) -> dict[str, int]:
    snap = watch.snapshot()
    return dict(Counter(str(snap[k].last[0]) if k in snap else "unseen" for k in keys))


def run_size(bench: Bench, n: int) -> dict[str, Any]:
    from kubernetes import client

    args = bench.args
    nss = namespaces_for(n, args.namespaces)
    keys = [(nss[i % len(nss)], f"svc-{i:04d}") for i in range(n)]
    res: dict[str, Any] = {"n": n, "namespaces": len(nss), "loadavg_start": probes.loadavg()}
    say(f"N={n}: {len(nss)} namespaces, operator from {Path(__file__).resolve().parent.parent}")
    create_namespaces(bench, nss, 60)
    info = bench.info
    # The timer-driven loop took a tick (CF_TICK_SECONDS); the event-driven one has none.
    tick = {"tick_seconds": TICK_SECONDS} if HAS_TICK else {}
    # As the chart deploys it: admission in a process of its own (`--webhooks separate`), or both in one.
    separate = args.webhooks == "separate"
    op = OperatorProcess(log_path=info.state_dir / "logs" / f"scale-operator-{n}.log",
                         webhook_port=info.ports["webhook"], metrics_port=info.ports["operator_health"],
                         flags=["--component", "controller", "--webhook-mode", "none"] if separate else [], **tick)
    hooks = OperatorProcess(log_path=info.state_dir / "logs" / f"scale-webhooks-{n}.log",
                            webhook_port=info.ports["webhook"], metrics_port=probes.free_port(),
                            flags=["--component", "webhooks"]) if separate else None
    watch = RolloutWatch(bench.admin, names.GROUP, names.VERSION, names.ROLLOUT_PLURAL, SELECTOR)
    deployments = DeploymentWatch(bench.admin, names.LABEL_ROLLOUT, names.LABEL_REVISION)
    admin_custom = client.CustomObjectsApi(bench.admin)
    alice_custom = client.CustomObjectsApi(bench.alice)
    if hooks is not None:
        hooks.start()
        assert hooks.proc is not None
        bench.webhook_pid, bench.webhook_metrics_port = hooks.proc.pid, hooks.metrics_port
    op.start()
    try:
        (hooks or op).wait_webhook_ready(timeout=min(120, args.timeout))
        time.sleep(2)  # let kopf finish its initial listing before the clock starts
        res["create"] = phase_create(bench, op, watch, admin_custom, keys)
        rev1 = res["create"].pop("_rev1")
        healthy_now = sum(1 for k in keys if k in rev1)
        say(f"N={n}: settling 5 s, then idle for {args.idle_seconds}s ({healthy_now}/{n} Healthy)")
        time.sleep(5)
        idle = Phase(bench, "idle", op, watch)
        time.sleep(args.idle_seconds)
        res["idle"] = idle.finish()
        res["idle"]["healthy_at_start"] = healthy_now
        res["idle"].pop("samples", None)
        f = figures(res)
        say(f"N={n}: idle: operator CPU {f['idle_operator_cpu_cores']} cores, RSS max "
            f"{f['idle_operator_rss_mb_max']} MB, {f['idle_operator_api_rps']} API requests/s")
        if not args.no_floor:  # on the calm sandbox, before the wave, and gone before it starts
            bench.floor_op = op
            res["floor"] = phase_floor(bench, keys)
            say(f"N={n}: floor: plain Deployment rollouts {res['floor']['rollout_s']}")
        res["wave"] = phase_wave(bench, op, watch, deployments, admin_custom, alice_custom, keys, rev1)
    except Exception as exc:
        bench.warn(f"N={n}: aborted: {type(exc).__name__}: {exc}")
        res["aborted"] = f"{type(exc).__name__}: {exc}"
    finally:
        res["operator_alive_at_end"] = op.alive()
        if not op.alive():
            bench.warn(f"N={n}: the operator exited; last log lines:\n{op.tail(15)}")
        if hooks is not None:
            hooks.stop()
            bench.webhook_pid = bench.webhook_metrics_port = None
        res["cleanup"] = cleanup(bench, op, watch, admin_custom, nss, keys)
        watch.stop()
        deployments.stop()
        op.stop()
        remove_webhook_configurations()
        res["loadavg_end"] = probes.loadavg()
    res["figures"] = figures(res)
    return res


def phase_create(bench: Bench, op: OperatorProcess, watch: RolloutWatch, custom: Any,
                 keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    args, n = bench.args, len(keys)
    say(f"N={n}: creating {n} Rollouts")
    phase = Phase(bench, "create", op, watch)
    created: dict[tuple[str, str], Call] = {}

    deadline = time.monotonic() + args.timeout  # sending the creates counts against the phase's timeout

    def create(key: tuple[str, str]) -> None:
        ns, name = key
        if time.monotonic() > deadline:
            created[key] = Call(time.monotonic(), 0.0, -1, "not sent: phase timeout")
            return
        created[key] = timed(lambda: custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, rollout(ns, name), _preload_content=False,
            _request_timeout=60))

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, keys))
    t_sent = time.monotonic() - t0
    failed = {k: c for k, c in created.items() if c.status // 100 != 2}
    if failed:
        bench.warn(f"create: {len(failed)} of {n} creates failed, e.g. {next(iter(failed.values())).reason}")

    def healthy(phase_: str | None, stable: str | None, canary: str | None, weight: int | None) -> bool:
        return phase_ == "Healthy" and bool(stable)

    wanted = [k for k in keys if k not in failed]

    def progress() -> tuple[int, int]:
        snap = watch.snapshot()
        return sum(1 for k in wanted if k in snap and snap[k].first(healthy) is not None), len(wanted)

    all_ok = wait_until(f"N={n} first revisions Healthy", progress, max(0.0, deadline - time.monotonic())) \
        and not failed
    out = phase.finish()
    out.pop("samples", None)
    snap = watch.snapshot()
    per, rev1 = [], {}
    last_healthy = t0
    for k in wanted:
        t = snap[k].first(healthy) if k in snap else None
        if t is not None:
            per.append(t - created[k].done)
            last_healthy = max(last_healthy, t)
            rev1[k] = next(s for (_, p, s, _c, _w) in snap[k].transitions if p == "Healthy" and s)
    out.update({
        "creates": call_summary(list(created.values())),
        "creates_sent_seconds": round(t_sent, 1),
        "all_healthy": all_ok,
        "healthy": len(per),
        "all_healthy_seconds": round(last_healthy - t0, 1) if all_ok else None,
        "time_to_healthy_s": {k: _r3(v) if isinstance(v, float) else v for k, v in summary(per).items()},
        "phases_at_end": phase_counts(watch, keys),
        "_rev1": rev1,
    })
    return out


def phase_wave(bench: Bench, op: OperatorProcess, watch: RolloutWatch, deployments: DeploymentWatch,
               admin_custom: Any, alice_custom: Any, keys: Sequence[tuple[str, str]],
               rev1: dict[tuple[str, str], str]) -> dict[str, Any]:
    args, n = bench.args, len(keys)
    targets = [k for k in keys if k in rev1]
    say(f"N={n}: wave of {len(targets)} canaries (30 s plan); approvals as alice at {args.approval_rate}/s "
        f"for {args.approval_seconds}s while they bake")
    rev2 = {k: revision_of(template(k[1], 2)) for k in targets}
    phase = Phase(bench, "wave", op, watch, sample_watch=True)
    patched: dict[tuple[str, str], Call] = {}

    deadline = time.monotonic() + args.timeout

    def patch(key: tuple[str, str]) -> None:
        ns, name = key
        if time.monotonic() > deadline:
            patched[key] = Call(time.monotonic(), 0.0, -1, "not sent: phase timeout")
            return
        body = {"spec": {"template": template(name, 2)}}
        patched[key] = timed(lambda: admin_custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, name, body, _preload_content=False,
            _request_timeout=60))

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(patch, targets))
    t_sent = time.monotonic() - t0
    failed = {k for k, c in patched.items() if c.status // 100 != 2}
    if failed:
        bench.warn(f"wave: {len(failed)} template patches failed, e.g. {patched[next(iter(failed))].reason}")
    # Approvals while the canaries bake (each approves that Rollout's canary revision).
    approvals = run_approvals(bench, op, watch, alice_custom, [k for k in targets if k not in failed], rev2)

    def promoted(k: tuple[str, str]) -> Callable[[str | None, str | None, str | None, int | None], bool]:
        return lambda phase_, stable, canary, weight: phase_ == "Healthy" and bool(stable) and stable != rev1[k]

    wanted = [k for k in targets if k not in failed]

    def progress() -> tuple[int, int]:
        snap = watch.snapshot()
        return sum(1 for k in wanted
                   if k in snap and snap[k].first(promoted(k), after=patched[k].done - 1) is not None), len(wanted)

    all_ok = wait_until(f"N={n} wave Healthy", progress, max(60.0, deadline - time.monotonic())) and not failed
    out = phase.finish()
    snap = watch.snapshot()
    lags, lags_after_step, first_steps, mismatched = [], [], [], 0
    shares: dict[str, list[float]] = {"operator": [], "pods": []}
    rolled_back = 0
    for k in wanted:
        t_change = patched[k].done
        seen = snap.get(k) or probes.Seen()
        old = rev1[k]

        def at_first_step(p: str | None, s: str | None, c: str | None, w: int | None, old: str = old) -> bool:
            return bool(c) and c != old and (w or 0) >= FIRST_WEIGHT

        t_step = seen.first(at_first_step, after=t_change - 1)
        t_done = seen.first(promoted(k), after=t_change - 1)
        if any(p == "RolledBack" and t >= t_change - 1 for (t, p, *_r) in seen.transitions):
            rolled_back += 1
        canaries = {c for (t, _p, _s, c, _w) in seen.transitions if t >= t_change - 1 and c and c != rev1[k]}
        if canaries and rev2[k] not in canaries:
            mismatched += 1
        if t_step is not None:
            first_steps.append(t_step - t_change)
        if t_done is not None:
            lags.append(t_done - t_change - PLAN_SECONDS)
            if t_step is not None:
                lags_after_step.append(t_done - t_step - PLAN_SECONDS)
                split = lag_split(seen, deployments, k, rev2[k], t_change, t_step, t_done)
                if split is not None:
                    shares["operator"].append(split[0])
                    shares["pods"].append(split[1])
                    for part, v in split[2].items():
                        shares.setdefault(f"operator_{part}", []).append(v)
    if rolled_back:
        bench.warn(f"wave: {rolled_back} healthy canaries were ROLLED BACK (inconclusive/no data?)")
    if mismatched:
        bench.warn(f"wave: {mismatched} canary revisions differ from the benchmark's revision_of(template)")
    out.update({
        "patches": call_summary(list(patched.values())),
        "patches_sent_seconds": round(t_sent, 1),
        "all_healthy": all_ok,
        "promoted": len(lags),
        "rolled_back": rolled_back,
        "lag_beyond_plan_s": _round_summary(summary(lags)),
        "first_step_s": _round_summary(summary(first_steps)),
        "lag_beyond_plan_after_first_step_s": _round_summary(summary(lags_after_step)),
        "lag_operator_s": _round_summary(summary(shares["operator"])),
        "lag_pods_s": _round_summary(summary(shares["pods"])),
        # The operator's share by what it was reacting to (the watch's view: includes its write's latency).
        "lag_operator_parts_s": {k[len("operator_"):]: _round_summary(summary(v)) for k, v in shares.items()
                                 if k.startswith("operator_")},
        "phases_at_end": phase_counts(watch, keys),
        "approvals": approvals,
        "prometheus_plateau": plateau(out.get("samples") or []),
    })
    out.pop("samples", None)
    return out


def lag_split(seen: probes.Seen, deployments: DeploymentWatch, key: tuple[str, str], rev: str, t_change: float,
              t_step: float, t_done: float) -> tuple[float, float, dict[str, float]] | None:
    """One canary's lag beyond the plan, split into the operator's share and the pods' share.

    The pods' share is what Kubernetes took to do what the operator asked: the canary Deployment from
    created to all its pods ready, and the stable Deployment from the promotion to all its pods on the
    promoted revision. The rest is the operator's: reacting to the template, to the ready canary, to
    the end of the bake (it may hold for analysis) and to the available stable. None when a moment was
    not seen (e.g. the watch relisted past it)."""
    ns, name = key
    canary, stable = (ns, names.deployment_name(name, "canary")), (ns, names.deployment_name(name, "stable"))

    def is_canary(r: DeploymentRow) -> bool:
        return r.revision == rev and r.replicas > 0

    created = deployments.first(canary, is_canary, t_change - 1)
    ready = deployments.first(canary, lambda r: is_canary(r) and r.done, t_change - 1)
    promoting = seen.first(lambda p, _s, _c, _w: p == "Promoting", after=t_step)
    available = deployments.first(stable, lambda r: r.revision == rev and r.done, t_step)
    if None in (created, ready, promoting, available):
        return None
    assert created is not None and ready is not None and promoting is not None and available is not None
    pods = max(0.0, ready - created) + max(0.0, min(available, t_done) - promoting)
    parts = {"template": created - t_change, "canary_ready": t_step - ready,
             "bake_end": promoting - t_step - PLAN_SECONDS, "stable_ready": t_done - available}
    return t_done - t_change - PLAN_SECONDS - pods, pods, parts


FLOOR_LABEL = "cf-scale-floor"


def _floor_deployment(name: str, version: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {FLOOR_LABEL: "1"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name, FLOOR_LABEL: "1"}},
                              "spec": {"containers": [{"name": "app", "image": f"bench/{name}:{version}"}]}}},
    }


def _rolled_out(d: Any) -> bool:
    st, meta = d.status, d.metadata
    return bool(st and (st.observed_generation or 0) >= (meta.generation or 0) and st.updated_replicas == 2
                and st.available_replicas == 2 and st.replicas == 2)


def phase_floor(bench: Bench, keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The sandbox's own floor: N plain Deployments (2 replicas, no operator involved) rolled out at
    once by Kubernetes' Deployment controller. A canary wave costs at least this (promotion is one such
    rollout of the stable Deployment, after the canary's own pods), so a lag near it is the sandbox's."""
    from kubernetes import client

    apps = client.AppsV1Api(bench.admin)
    n, timeout = len(keys), bench.args.timeout
    fkeys = [(ns, f"floor-{i:04d}") for i, (ns, _name) in enumerate(keys)]
    say(f"N={n}: floor: {n} plain Deployments rolled out at once by the Deployment controller alone")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: apps.create_namespaced_deployment(k[0], _floor_deployment(k[1], 1)), fkeys))

    def done_now() -> set[tuple[str, str]]:
        items: list[Any] = apps.list_deployment_for_all_namespaces(label_selector=f"{FLOOR_LABEL}=1",
                                                                   _request_timeout=60).items
        return {(d.metadata.namespace, d.metadata.name) for d in items if _rolled_out(d)}

    wait_until("floor: first revisions available", lambda: (len(done_now()), n), timeout, every=10)
    patched: dict[tuple[str, str], float] = {}

    def patch(k: tuple[str, str]) -> None:
        apps.patch_namespaced_deployment(k[1], k[0], {"spec": {"template": _floor_deployment(k[1], 2)["spec"]
                                                               ["template"]}})
        patched[k] = time.monotonic()

    phase = Phase(bench, "floor", bench.floor_op) if bench.floor_op is not None else None
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(patch, fkeys))
    finished: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout
    while len(finished) < n and time.monotonic() < deadline:
        now = time.monotonic()
        for k in done_now():
            if k in patched and k not in finished and patched[k] <= now:
                finished[k] = now - patched[k]
        time.sleep(1.0)
    out: dict[str, Any] = phase.finish() if phase is not None else {}
    out.pop("samples", None)
    out.update({"n": n, "rolled_out": len(finished),
                "rollout_s": _round_summary(summary(list(finished.values())))})
    for ns in sorted({k[0] for k in fkeys}):
        try:
            apps.delete_collection_namespaced_deployment(ns, label_selector=f"{FLOOR_LABEL}=1",
                                                         propagation_policy="Foreground")
        except Exception as exc:
            bench.warn(f"floor: delete deployments in {ns}: {type(exc).__name__}: {exc}")
    core = client.CoreV1Api(bench.admin)

    def pods_gone() -> tuple[int, int]:
        # Raw JSON: turning thousands of pods into client models took over a minute per look at 1,000.
        rsp = core.list_pod_for_all_namespaces(label_selector=f"{FLOOR_LABEL}=1", _request_timeout=60,
                                               _preload_content=False)
        left = len(json.loads(rsp.data).get("items") or [])
        return 2 * n - left, 2 * n

    wait_until("floor: pods gone before the wave", pods_gone, timeout, every=15)
    return out


def _round_summary(s: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {k: (round(float(v), 1) if k != "n" and v is not None else v) for k, v in s.items()}


def plateau(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prometheus queries per 10 s while the number of canaries in analysis is at its plateau (>= 90% of max)."""
    rows = [r for r in samples if r.get("queries") is not None and "in_analysis" in r]
    if len(rows) < 2:
        return {}
    peak = max(r["in_analysis"] for r in rows)
    if peak == 0:
        return {"canaries_in_analysis_max": 0}
    idx = [i for i, r in enumerate(rows) if r["in_analysis"] >= 0.9 * peak]
    first, last = rows[idx[0]], rows[idx[-1]]
    if last["t"] - first["t"] < 10:  # too short to see an interval: use the whole wave
        first, last = rows[0], rows[-1]
    span = max(1e-6, last["t"] - first["t"])
    inside = [r["in_analysis"] for r in rows if first["t"] <= r["t"] <= last["t"]]
    per_interval = (last["queries"] - first["queries"]) / span * 10
    avg = sum(inside) / len(inside)
    return {
        "seconds": round(span, 1),
        "canaries_in_analysis_max": peak,
        "canaries_in_analysis_avg": round(avg, 1),
        "queries_per_10s_interval": round(per_interval, 1),
        "queries_per_canary_per_interval": round(per_interval / avg, 2) if avg else None,
    }


PROBE_EVERY = 0.2  # seconds between direct admission probes


class AdmissionProbe:
    """Times the approvals webhook from outside the API server: an AdmissionReview of an approval, as the
    API server sends it, POSTed over one kept-alive HTTPS connection every PROBE_EVERY s. It counts all
    of the webhook server's side (TLS, HTTP, parsing, the wait on its event loop, the decision), none
    of the API server's. An admission answer has no side effect: only the API server applies it."""

    def __init__(self, bench: Bench, key: tuple[str, str], revision: str) -> None:
        import urllib3
        from kubernetes import client

        self.times: list[float] = []
        self.failures = 0
        hooks = client.AdmissionregistrationV1Api(bench.admin).read_mutating_webhook_configuration(names.GROUP)
        url = next(str(h.client_config.url) for h in hooks.webhooks or [] if h.name.startswith("approvals."))
        parsed = urllib3.util.parse_url(url)
        self.path = parsed.path or "/"
        self.pool = urllib3.HTTPSConnectionPool(str(parsed.host), parsed.port, cert_reqs="CERT_NONE", maxsize=1,
                                                assert_hostname=False)
        urllib3.disable_warnings()
        old = client.CustomObjectsApi(bench.admin).get_namespaced_custom_object(
            names.GROUP, names.VERSION, key[0], names.ROLLOUT_PLURAL, key[1])
        new = json.loads(json.dumps(old))
        new["metadata"].setdefault("annotations", {})[names.ANN_APPROVE] = revision
        self.review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "scale-probe", "operation": "UPDATE", "namespace": key[0], "name": key[1],
            "kind": {"group": names.GROUP, "version": names.VERSION, "kind": "Rollout"},
            "resource": {"group": names.GROUP, "version": names.VERSION, "resource": names.ROLLOUT_PLURAL},
            "userInfo": {"username": "alice", "groups": [names.SENIOR_GROUP, "system:authenticated"]},
            "object": new, "oldObject": old}}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admission-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = json.dumps(self.review).encode()
        while not self._stop.wait(PROBE_EVERY):
            t0 = time.monotonic()
            try:
                rsp = self.pool.urlopen("POST", self.path, body=body, headers={"Content-Type": "application/json"},
                                        timeout=10.0, retries=False)
                ok = rsp.status == 200 and b'"response"' in rsp.data
            except Exception:
                ok = False
            if ok:
                self.times.append(time.monotonic() - t0)
            else:
                self.failures += 1

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=15)
        t = self.times  # seconds; _ms1 makes them ms
        return {"n": len(t), "failures": self.failures, "p50_ms": _ms1(probes.quantile(t, 0.5)),
                "p99_ms": _ms1(probes.quantile(t, 0.99)), "max_ms": _ms1(max(t) if t else None)}


def run_approvals(bench: Bench, op: OperatorProcess, watch: RolloutWatch, custom: Any,
                  keys: Sequence[tuple[str, str]], rev2: dict[tuple[str, str], str]) -> dict[str, Any]:
    args = bench.args
    total = int(args.approval_rate * args.approval_seconds)
    if not keys or total <= 0:
        return {}
    phase = Phase(bench, "approvals", op, watch)
    try:
        probe: AdmissionProbe | None = AdmissionProbe(bench, keys[0], rev2[keys[0]])
    except Exception as exc:
        bench.warn(f"approvals: no direct admission probe: {type(exc).__name__}: {exc}")
        probe = None
    calls: list[Call] = []
    lock = threading.Lock()

    def approve(key: tuple[str, str]) -> None:
        ns, name = key
        body = {"metadata": {"annotations": {names.ANN_APPROVE: rev2[key]}}}
        c = timed(lambda: custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, name, body, _preload_content=False,
            _request_timeout=APPROVAL_TIMEOUT))
        with lock:
            calls.append(c)

    # Open loop, as real approvers arrive: each request starts at its due time on its own thread, however
    # slowly earlier ones are answered (in flight at most MAX_IN_FLIGHT; beyond that it is not sent).
    t0 = time.monotonic()
    threads: list[threading.Thread] = []
    skipped = 0
    for i in range(total):
        wait = t0 + i / args.approval_rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if sum(1 for t in threads if t.is_alive()) >= MAX_IN_FLIGHT:
            skipped += 1
            continue
        t = threading.Thread(target=approve, args=(keys[i % len(keys)],), daemon=True)
        t.start()
        threads.append(t)
    sent = time.monotonic() - t0
    for t in threads:
        t.join(timeout=max(0.0, t0 + sent + APPROVAL_TIMEOUT + 5 - time.monotonic()))
    answered = max((c.done for c in calls), default=t0) - t0
    direct = probe.finish() if probe is not None else {}
    out = phase.finish()
    out["direct_probe"] = direct
    out.pop("samples", None)
    out.update({"requests": call_summary(calls), "sent_seconds": round(sent, 1),
                "answered_seconds": round(answered, 1), "not_sent_in_flight_cap": skipped,
                "unanswered": len(threads) - len(calls),
                "achieved_rate": round(len(threads) / max(1e-6, sent), 1)})
    return out


def cleanup(bench: Bench, op: OperatorProcess, watch: RolloutWatch, custom: Any, nss: Sequence[str],
            keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Stop the operator, drop its webhooks, delete the Rollouts (removing kopf's finalizers, which
    only a running operator would), then the namespaces; bounded by --timeout.

    Deleting through today's operator took ~4 s per Rollout at 100 (each finalizer removal is an
    UPDATE through its starved webhooks): an hour at 1,000. Cleanup is not a measured figure.
    """
    from kubernetes import client

    t0 = time.monotonic()
    timeout = bench.args.timeout
    say(f"cleanup: stopping the operator, deleting {len(keys)} Rollouts, then {len(nss)} namespaces")
    op.stop()
    remove_webhook_configurations()

    def delete_in(ns: str) -> None:
        try:
            custom.delete_collection_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL,
                                                              label_selector=SELECTOR, _request_timeout=timeout)
        except Exception as exc:
            bench.warn(f"cleanup: delete rollouts in {ns}: {type(exc).__name__}: {exc}")

    def unfinalize(key: tuple[str, str]) -> bool:
        try:
            custom.patch_namespaced_custom_object(names.GROUP, names.VERSION, key[0], names.ROLLOUT_PLURAL, key[1],
                                                  {"metadata": {"finalizers": None}}, _preload_content=False,
                                                  _request_timeout=60)
            return True
        except Exception:  # gone already (404) or unreachable: the wait below tells
            return False

    with ThreadPoolExecutor(len(nss)) as pool:
        list(pool.map(delete_in, nss))
    with ThreadPoolExecutor(8) as pool:
        forced = sum(pool.map(unfinalize, keys))

    def left() -> int:
        try:
            items = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL,
                                                      label_selector=SELECTOR, _request_timeout=60)["items"]
            return sum(1 for it in items if it["metadata"]["namespace"] in nss)
        except Exception:
            return len(keys)

    if not wait_until("cleanup: Rollouts gone", lambda: (len(keys) - left(), len(keys)), timeout):
        bench.warn("cleanup: Rollouts still there")
    rollouts_s = time.monotonic() - t0
    core = client.CoreV1Api(bench.admin)
    for ns in nss:
        try:
            core.delete_namespace(ns, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:
                bench.warn(f"cleanup: delete namespace {ns}: {exc.status}")

    def ns_gone() -> tuple[int, int]:
        present = {n.metadata.name for n in core.list_namespace(label_selector=SELECTOR).items if n.metadata}
        return sum(1 for ns in nss if ns not in present), len(nss)

    ns_ok = wait_until("cleanup: namespaces gone", ns_gone, timeout)
    if not ns_ok:
        bench.warn("cleanup: namespaces still terminating")
    return {"rollouts_seconds": round(rollouts_s, 1), "seconds": round(time.monotonic() - t0, 1),
            "finalizers_forced": forced, "namespaces_gone": ns_ok}


# ---------------------------------------------------------------- figures and tables


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """The flat headline figures of one size (what tables print and comparisons divide)."""
    f: dict[str, Any] = {
        "create_all_healthy_s": _get(res, "create", "all_healthy_seconds"),
        "create_healthy": _get(res, "create", "healthy"),
        "create_time_to_healthy_p50_s": _get(res, "create", "time_to_healthy_s", "p50"),
        "create_time_to_healthy_p95_s": _get(res, "create", "time_to_healthy_s", "p95"),
        "create_time_to_healthy_max_s": _get(res, "create", "time_to_healthy_s", "max"),
        "create_request_p99_ms": _get(res, "create", "creates", "all_ms", "p99"),
        "create_not_sent": _get(res, "create", "creates", "not_sent"),
        "idle_operator_cpu_cores": _get(res, "idle", "cpu", "cores", "operator"),
        "idle_operator_rss_mb_median": _get(res, "idle", "operator_rss_mb", "median"),
        "idle_operator_rss_mb_max": _get(res, "idle", "operator_rss_mb", "max"),
        "idle_operator_api_rps": _get(res, "idle", "operator_api", "rps"),
        "idle_all_clients_api_rps": _get(res, "idle", "all_clients_api_rps"),
        "idle_reconciles_per_s": _get(res, "idle", "reconcile", "per_s"),
        "idle_reconcile_p50_s": _get(res, "idle", "reconcile", "p50_s"),
        "idle_reconcile_p99_s": _get(res, "idle", "reconcile", "p99_s"),
        "idle_prometheus_queries_per_s": _get(res, "idle", "prometheus", "queries_per_s"),
        "wave_promoted": _get(res, "wave", "promoted"),
        "wave_rolled_back": _get(res, "wave", "rolled_back"),
        "wave_first_step_p50_s": _get(res, "wave", "first_step_s", "p50"),
        "wave_first_step_p95_s": _get(res, "wave", "first_step_s", "p95"),
        "wave_lag_p50_s": _get(res, "wave", "lag_beyond_plan_s", "p50"),
        "wave_lag_p95_s": _get(res, "wave", "lag_beyond_plan_s", "p95"),
        "wave_lag_max_s": _get(res, "wave", "lag_beyond_plan_s", "max"),
        "wave_lag_operator_p50_s": _get(res, "wave", "lag_operator_s", "p50"),
        "wave_lag_operator_p95_s": _get(res, "wave", "lag_operator_s", "p95"),
        "wave_lag_pods_p50_s": _get(res, "wave", "lag_pods_s", "p50"),
        "wave_lag_pods_p95_s": _get(res, "wave", "lag_pods_s", "p95"),
        "wave_operator_cpu_cores": _get(res, "wave", "cpu", "cores", "operator"),
        "wave_operator_api_rps": _get(res, "wave", "operator_api", "rps"),
        "wave_reconcile_p50_s": _get(res, "wave", "reconcile", "p50_s"),
        "wave_reconcile_p99_s": _get(res, "wave", "reconcile", "p99_s"),
        "wave_reconcile_beyond_10s_share": _get(res, "wave", "reconcile", "beyond_largest_bucket"),
        "wave_queue_p50_s": _get(res, "wave", "queue", "p50_s"),
        "wave_queue_p99_s": _get(res, "wave", "queue", "p99_s"),
        "wave_status_write_p50_s": _get(res, "wave", "kube_requests", "patch rollouts/status", "p50_s"),
        "wave_status_write_p99_s": _get(res, "wave", "kube_requests", "patch rollouts/status", "p99_s"),
        "wave_prometheus_queries_per_interval": _get(res, "wave", "prometheus_plateau", "queries_per_10s_interval"),
        "wave_canaries_in_analysis": _get(res, "wave", "prometheus_plateau", "canaries_in_analysis_avg"),
        "wave_patch_request_p99_ms": _get(res, "wave", "patches", "all_ms", "p99"),
        "approvals_client_p50_ms": _get(res, "wave", "approvals", "requests", "all_ms", "p50"),
        "approvals_client_p99_ms": _get(res, "wave", "approvals", "requests", "all_ms", "p99"),
        "approvals_achieved_rate": _get(res, "wave", "approvals", "achieved_rate"),
        "floor_rollout_p50_s": _get(res, "floor", "rollout_s", "p50"),
        "floor_rollout_p95_s": _get(res, "floor", "rollout_s", "p95"),
        "floor_rollout_max_s": _get(res, "floor", "rollout_s", "max"),
    }
    hooks = _get(res, "wave", "approvals", "apiserver_webhook_latency") or {}
    for hook, h in hooks.items():
        short = hook.split(".")[0]
        f[f"approvals_apiserver_{short}_p50_ms"] = h.get("p50_ms")
        f[f"approvals_apiserver_{short}_p99_ms"] = h.get("p99_ms")
    probe = _get(res, "wave", "approvals", "direct_probe") or {}
    f["approvals_direct_probe_p50_ms"] = probe.get("p50_ms")
    f["approvals_direct_probe_p99_ms"] = probe.get("p99_ms")
    for hook, h in (_get(res, "wave", "approvals", "server_webhook_latency") or {}).items():
        short = hook.split(".")[0]
        f[f"approvals_server_{short}_p50_ms"] = h.get("p50_ms")
        f[f"approvals_server_{short}_p99_ms"] = h.get("p99_ms")
    f["simulator_target_ok"] = all(
        bool(_get(res, ph, "simulator_target", "ok")) for ph in ("create", "idle", "wave") if ph in res)
    return f


LABELS = {
    "create_all_healthy_s": "create: all N first revisions Healthy (s)",
    "create_healthy": "create: Healthy / N",
    "create_time_to_healthy_p50_s": "create: per Rollout to Healthy p50 (s)",
    "create_time_to_healthy_p95_s": "create: per Rollout to Healthy p95 (s)",
    "create_time_to_healthy_max_s": "create: per Rollout to Healthy max (s)",
    "create_request_p99_ms": "create: request (incl. webhooks) p99 (ms)",
    "create_not_sent": "create: not sent before the phase timeout",
    "idle_operator_cpu_cores": "idle: operator CPU (cores)",
    "idle_operator_rss_mb_median": "idle: operator RSS median (MB)",
    "idle_operator_rss_mb_max": "idle: operator RSS max (MB)",
    "idle_operator_api_rps": "idle: operator API requests/s",
    "idle_all_clients_api_rps": "idle: API requests/s, all clients",
    "idle_reconciles_per_s": "idle: reconciles/s",
    "idle_reconcile_p50_s": "idle: reconcile p50 (s)",
    "idle_reconcile_p99_s": "idle: reconcile p99 (s)",
    "idle_prometheus_queries_per_s": "idle: Prometheus queries/s",
    "wave_promoted": "wave: promoted / N",
    "wave_rolled_back": "wave: rolled back (healthy canaries!)",
    "wave_first_step_p50_s": "wave: change -> first step p50 (s)",
    "wave_first_step_p95_s": "wave: change -> first step p95 (s)",
    "wave_lag_p50_s": "wave: lag beyond 30 s plan p50 (s)",
    "wave_lag_p95_s": "wave: lag beyond 30 s plan p95 (s)",
    "wave_lag_max_s": "wave: lag beyond 30 s plan max (s)",
    "wave_lag_operator_p50_s": "wave: lag, operator's share p50 (s)",
    "wave_lag_operator_p95_s": "wave: lag, operator's share p95 (s)",
    "wave_lag_pods_p50_s": "wave: lag, pods' share p50 (s)",
    "wave_lag_pods_p95_s": "wave: lag, pods' share p95 (s)",
    "floor_rollout_p50_s": "floor: N plain Deployment rollouts p50 (s)",
    "floor_rollout_p95_s": "floor: N plain Deployment rollouts p95 (s)",
    "floor_rollout_max_s": "floor: N plain Deployment rollouts max (s)",
    "wave_operator_cpu_cores": "wave: operator CPU (cores)",
    "wave_operator_api_rps": "wave: operator API requests/s",
    "wave_reconcile_p50_s": "wave: reconcile p50 (s)",
    "wave_queue_p50_s": "wave: waited for a worker p50 (s)",
    "wave_queue_p99_s": "wave: waited for a worker p99 (s)",
    "wave_status_write_p50_s": "wave: status write p50 (s, operator's view)",
    "wave_status_write_p99_s": "wave: status write p99 (s, operator's view)",
    "wave_reconcile_p99_s": "wave: reconcile p99 (s; 10 = the largest bucket)",
    "wave_reconcile_beyond_10s_share": "wave: share of reconciles > 10 s",
    "wave_prometheus_queries_per_interval": "wave: Prometheus queries per 10 s interval",
    "wave_canaries_in_analysis": "wave: canaries in analysis then (avg)",
    "wave_patch_request_p99_ms": "wave: template patch (incl. webhooks) p99 (ms)",
    "approvals_client_p50_ms": "approvals: client-side p50 (ms)",
    "approvals_client_p99_ms": "approvals: client-side p99 (ms)",
    "approvals_achieved_rate": "approvals: achieved rate (/s)",
    "simulator_target_ok": "simulator target up in every phase",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return ""
    if b == 0:
        return ""
    return f"x{a / b:.2f}"


def render_size(res: dict[str, Any], peer: dict[str, Any] | None) -> list[str]:
    n, f = res["n"], res["figures"]
    la = res.get("loadavg_start") or []
    lines = [
        "",
        f"== N = {n} Rollouts ({res['namespaces']} namespaces); load average at start "
        f"{'/'.join(f'{x:.2f}' for x in la)}, at end {'/'.join(f'{x:.2f}' for x in res.get('loadavg_end') or [])}",
    ]
    head = f"{'figure':<46} {'value':>10}"
    if peer:
        head += f" {'before':>10} {'after/before':>12}"
    head += f" {'issue @200':>11} {'vs issue':>9} {'target @1000':>17}"
    lines += [head, "-" * len(head)]
    keys = list(LABELS) + sorted(k for k in f if k not in LABELS)
    for k in keys:
        if k not in f:
            continue
        v = f[k]
        row = f"{LABELS.get(k, k.replace('_', ' ')):<46} {_fmt(v):>10}"
        if peer:
            pv = (peer.get("figures") or {}).get(k)
            row += f" {_fmt(pv):>10} {_ratio(v, pv):>12}"
        issue = ISSUE_200.get(k)
        if issue:
            value, at, per_rollout = issue
            cmp = ""
            if isinstance(v, int | float) and not isinstance(v, bool):
                cmp = f"x{(v / n) / (value / at):.2f}*" if per_rollout else f"x{v / value:.2f}"
            row += f" {_fmt(value):>11} {cmp:>9}"
        else:
            row += f" {'':>11} {'':>9}"
        row += f" {TARGETS_1000.get(k, ''):>17}"
        lines.append(row)
    lines.append("  (* per Rollout: (value/N) / (issue value/200))")
    for ph in ("idle", "wave"):
        api = _get(res, ph, "operator_api")
        if api:
            verbs = ", ".join(f"{k} {v:g}" for k, v in api["by_verb_rps"].items())
            agents = ", ".join(f"{k} {v:g}" for k, v in api["by_agent_rps"].items())
            lines.append(f"  {ph}: operator requests/s by verb: {verbs or 'none'}; by user agent: {agents or '-'}")
            if api.get("top_rps"):
                lines.append("     top: " + ", ".join(f"{k} {v:g}" for k, v in api["top_rps"].items()))
        allv = _get(res, ph, "all_clients_api_rps_by_verb")
        if allv:
            lines.append(f"  {ph}: all clients' requests/s by verb: "
                         + ", ".join(f"{k} {v:g}" for k, v in allv.items()))
    for ph in ("idle", "wave"):
        cores = _get(res, ph, "cpu", "cores")
        if cores:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cores.items(), key=lambda kv: -kv[1]))
            lines.append(f"  {ph}: CPU cores: {parts}")
    hooks = _get(res, "wave", "approvals", "apiserver_webhook_latency") or {}
    for hook, h in hooks.items():
        lines.append(f"  approvals: API server's view of webhook {hook}: n {h['n']}, p50 {_fmt(h['p50_ms'])} ms, "
                     f"p99 {_fmt(h['p99_ms'])} ms")
    for hook, h in (_get(res, "wave", "approvals", "server_webhook_latency") or {}).items():
        lines.append(f"  approvals: the webhook server's own time for {hook}: n {h['n']}, p50 {_fmt(h['p50_ms'])} ms, "
                     f"p99 {_fmt(h['p99_ms'])} ms")
    probe = _get(res, "wave", "approvals", "direct_probe")
    if probe:
        lines.append(f"  approvals: the webhook server timed from outside the API server (an approval's "
                     f"AdmissionReview every {PROBE_EVERY:g} s, kept-alive HTTPS): n {probe['n']}, failures "
                     f"{probe['failures']}, p50 {_fmt(probe['p50_ms'])} ms, p99 {_fmt(probe['p99_ms'])} ms, "
                     f"max {_fmt(probe['max_ms'])} ms")
    req = _get(res, "wave", "approvals", "requests")
    if req:
        lines.append(f"  approvals: {req['n']} requests, by status {req['by_status']}; refused because: "
                     f"{'; '.join(f'{r} ({c})' for r, c in req['top_reasons']) or '-'}")
    queue = _get(res, "wave", "queue")
    if queue and queue.get("n"):
        lines.append(f"  wave: a due Rollout waited for a worker p50/p99 {_fmt(queue['p50_s'])}/"
                     f"{_fmt(queue['p99_s'])} s ({queue['n']} reconciles)")
    kube_req = _get(res, "wave", "kube_requests") or {}
    if kube_req:
        lines.append("  wave: the operator's API requests as it timed them, p50/p99 s (n): " + ", ".join(
            f"{k} {_fmt(v['p50_s'])}/{_fmt(v['p99_s'])} ({v['n']})" for k, v in list(kube_req.items())[:6]))
    parts = _get(res, "wave", "lag_operator_parts_s")
    if parts:
        lines.append("  wave: the operator's share of the lag by what it reacted to, p50/p95 s: "
                     + ", ".join(f"{k} {_fmt(v.get('p50'))}/{_fmt(v.get('p95'))}" for k, v in parts.items()))
    pl = _get(res, "wave", "prometheus_plateau")
    if pl:
        lines.append(f"  wave: Prometheus plateau: {pl}")
    for ph in ("create", "idle", "wave"):
        st = _get(res, ph, "simulator_target")
        if st:
            loud = "" if st.get("ok") else "   <<<<< SIMULATOR TARGET DOWN: this phase measured the simulator"
            lines.append(f"  {ph}: simulator target: health {st.get('health_now')}, down scrapes "
                         f"{st.get('down_scrapes')}/{st.get('scrapes')}, scrape s max {st.get('scrape_seconds_max')} "
                         f"avg {st.get('scrape_seconds_avg')}, samples {st.get('samples_max')}"
                         f"{', error ' + st['last_error'] if st.get('last_error') else ''}{loud}")
    if res.get("aborted"):
        lines.append(f"  ABORTED: {res['aborted']}")
    return lines


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,335,1000", help="comma-separated numbers of Rollouts")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per phase (create, wave, cleanup)")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--approval-rate", type=float, default=50.0, help="approvals per second during the wave")
    ap.add_argument("--approval-seconds", type=float, default=20.0)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the sandbox-floor phase (N plain Deployments rolled out without the operator)")
    ap.add_argument("--webhooks", choices=("separate", "same"), default="separate",
                    help="admission in its own process, as the chart deploys it (default), or in the controller's")
    ap.add_argument("--compare", type=Path, default=None,
                    help="earlier --json output to print after/before ratios against (default: "
                         "benchmarks/results/scale-before.json when it exists and is not --json)")
    ap.add_argument("--sim-latency", action="store_true",
                    help="keep the simulator's latency histogram (off by default: at 1,000 services it is "
                         "two thirds of the samples Prometheus ingests each second, and the plan's metric does "
                         "not read it)")
    ap.add_argument("--keep-sandbox", action="store_true", help="leave a sandbox this run started running")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    default_before = Path(__file__).resolve().parent / "results" / "scale-before.json"
    compare = args.compare or (default_before if default_before.exists() and
                               (args.json is None or args.json.resolve() != default_before) else None)
    peers: dict[str, Any] = {}
    if compare and compare.exists():
        peers = json.loads(compare.read_text()).get("sizes", {})

    # The API server's audit log of the operator's requests: opt in before the sandbox starts.
    state = layout.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    policy = state / "audit-policy.json"
    policy.write_text(probes.audit_policy(names.OPERATOR_USERNAME))
    os.environ[components.ENV_AUDIT_POLICY] = str(policy)
    os.environ[components.ENV_SIM_LATENCY] = "1" if args.sim_latency else "0"
    was_running = any(st["running"] for st in cluster.status().values())
    t_start = time.time()
    info = cluster.up(quiet=False)
    p = layout.paths()
    rec = ProcRecord.load(p.pid_file("kube-apiserver"))
    audit_on = rec is not None and any(a.startswith("--audit-policy-file") for a in rec.argv)
    tokens = {row.split(",")[1]: row.split(",")[0] for row in p.tokens.read_text().splitlines() if row.strip()}
    sim = ProcRecord.load(p.pid_file("simulator"))
    admin_token = next(tok for user, tok in tokens.items() if user == "cf-admin")
    bench = Bench(args, info, admin_token,
                  probes.AuditTail(components.audit_log(p), names.OPERATOR_USERNAME) if audit_on else None)
    if sim is not None and ("--no-latency" in sim.argv) == args.sim_latency:
        bench.warn(f"the running simulator {'leaves out' if args.sim_latency else 'exposes'} its latency histogram, "
                   "unlike this run's setting; bring the sandbox down and run again")
    if not audit_on:
        bench.warn("the running API server has no audit log (started without the benchmark): the operator's "
                   "requests by verb are not measured; bring the sandbox down and run again")
    bench.admin, bench.alice = api_client("admin"), api_client("alice", pool=MAX_IN_FLIGHT)
    install_crds()
    policies = cluster.kubectl("get", "frictionpolicies", "-o", "name", check=False).stdout.split()
    if policies:
        bench.warn(f"FrictionPolicies exist ({', '.join(policies)}): they add friction to the plain Rollouts")
    remove_webhook_configurations()  # left by an earlier operator; ours registers them again
    out: dict[str, Any] = {
        "benchmark": "scale",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "tree": str(Path(__file__).resolve().parent.parent),
        "git": _git_head(),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": probes.loadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "plan": {"replicas": 2, "steps": ["setWeight 50", "pause 30s"], "metric": "errorRatio maxRatio 0.05",
                 "interval": "10s", "simulator_latency_histogram": args.sim_latency,
                 "operator_tick_s": TICK_SECONDS if HAS_TICK else None,
                 "webhooks": args.webhooks},
        "sizes": {},
    }
    try:
        for n in sizes:
            res = run_size(bench, n)
            out["sizes"][str(n)] = res
            print("\n".join(render_size(res, peers.get(str(n)))), flush=True)
            if args.json:
                _write(args.json, out, bench)
    finally:
        if bench.audit is not None:
            bench.audit.stop()
        out["machine"]["loadavg_end"] = probes.loadavg()
        out["warnings"] = bench.warnings
        out["seconds"] = round(time.time() - t_start, 1)
        if args.json:
            _write(args.json, out, bench)
        if not was_running and not args.keep_sandbox:
            cluster.down(quiet=False)
    print("\n".join(["", f"== all sizes ({out['seconds']:.0f} s); warnings:", *(f"  - {w}" for w in bench.warnings)]
                    if bench.warnings else ["", f"== all sizes ({out['seconds']:.0f} s); no warnings"]))
    return 0


def _write(path: Path, out: dict[str, Any], bench: Bench) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out["warnings"] = bench.warnings
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")


def _git_head() -> str | None:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=False, cwd=Path(__file__).resolve().parent).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
