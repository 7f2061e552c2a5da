"""The side-by-side run of `python -m benchmarks.detection`: ours (live, and replayed) next to the
peers' emulated judges on the same data, live and in simulated time, and the orders a -99% release
loses guarded by each judge vs unguarded. See `benchmarks.peers` for the trials and judges.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from benchmarks import detection as d
from benchmarks import peers as p
from benchmarks.replay import Peer, replayable
from benchmarks.world import running_prometheus
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.sandbox.simulator import StaticSource, serve
from controlled_friction.sandbox.traffic import FaultProfile, TrafficConfig, TrafficModel

LIVE_OURS = "ours, live"  # the operator's planner itself, rolling back (detection.run_trial)


def _judges(spec: Any) -> tuple[p.Ours, list[Peer]]:
    a = spec.analysis
    metrics = replayable(a.metrics)
    err = next(m for m in a.metrics if m.kind == "errorRatio")
    orders = next(m for m in a.metrics if m.kind == "orderRateDrop")
    peers = p.judges_for(err.max_ratio, err.max_increase_over_stable, orders.max_drop)
    return p.Ours(tuple(metrics), a.interval, a.min_requests, a.failure_limit), peers


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def live(args: argparse.Namespace, config: TrafficConfig, ours: p.Ours, peers: list[Peer],
         cases: tuple[p.Case, ...]) -> tuple[list[p.Verdicts], dict[str, Any], list[d.TrialResult]]:
    """One Prometheus, one simulator: the operator's own live trials and the recorded canaries at once."""
    s = d.Settings(args.runs, args.timeout, args.healthy_seconds, args.warmup_timeout, args.concurrency,
                   args.rate, args.tick, args.seed, args.verbose, d.use_profile("critical"), d.SCENARIOS,
                   from_start=True)
    model = TrafficModel(config, seed=args.seed)
    source = StaticSource()
    rng = random.Random(args.seed)
    with serve(model, source) as sim, running_prometheus([sim.target], d.SCRAPE_INTERVAL) as prom:
        client = PrometheusClient(prom)
        _log(f"live: {len(cases) * args.runs} recorded canaries of {args.record_seconds:g}s and "
             f"{len(d.SCENARIOS) * args.runs} live trials of our operator ...")
        with ThreadPoolExecutor(max_workers=len(cases) * args.runs) as rec_pool, \
                ThreadPoolExecutor(max_workers=s.concurrency) as ours_pool:
            recorded: list[tuple[p.Case, Future[Any]]] = [
                (c, rec_pool.submit(p.record_live, c, i, args.record_seconds, source, client, args.rate,
                                    d.SCRAPE_INTERVAL))
                for c in cases for i in range(args.runs)]
            trials = [ours_pool.submit(d.run_trial, sc, i, s, source, model, prom)
                      for sc, i in d.trial_order(s.scenarios, s.runs)]
            results = sorted((f.result() for f in trials), key=lambda r: (r.scenario, r.run))
            _log("live: our operator's trials done; waiting for the recorded canaries")
            verdicts = [p.judge_all(f.result(), c.name, "live", ours, peers, rng) for c, f in recorded]
    return verdicts, d.summarise(results, s), results


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    analysis = d.use_profile("critical")
    spec = d.rollout_spec("x", analysis)
    ours, peers = _judges(spec)
    config = TrafficConfig(rate=args.rate, base_error_rate=d.BASE_ERROR_RATE)
    cases = p.cases(d.BASE_ERROR_RATE, d.SOFT_CANARY_ERROR)
    keys = [p.OURS, *(x.key for x in peers)]
    doc: dict[str, Any] = {"judges": {p.OURS: "ours: the planner's judge replayed on the series",
                                      **{x.key: x.label for x in peers}}}
    header = parameters(args, spec, peers)
    print("\n".join(header), flush=True)
    live_verdicts: list[p.Verdicts] = []
    live_ours: dict[str, Any] | None = None
    if not args.no_live:
        live_verdicts, live_ours, trials = live(args, config, ours, peers, cases)
        doc["live_ours_trials"] = [asdict(r) for r in trials]
    seconds = {"hard": args.sim_hard_seconds, "soft": args.record_seconds, "healthy": args.record_seconds}
    runs = {"hard": args.sim_hard_runs, "soft": args.sim_runs, "healthy": args.sim_runs}
    sim_verdicts = p.simulated_trials(cases, runs, seconds, args.sim_seed, config, ours, peers, progress=_log)
    sim = p.summarise(sim_verdicts, keys)
    rec = p.summarise(live_verdicts, keys) if live_verdicts else None
    schedule = p.plan_schedule(d.critical_steps(), args.open_pause)
    unguarded = p.unguarded_lost(schedule, args.release_minutes * 60, FaultProfile(order_drop=0.99), config,
                                 args.sim_seed)
    lines = []
    if rec is not None:
        lines += ["", f"LIVE, same Prometheus data: {args.runs} canaries per case kept in traffic "
                  f"{args.record_seconds:g}s, every judge on the recorded counters"]
        lines += table(rec, keys, live_ours)
        lines += ratios(rec, keys)
    lines += ["", f"SIMULATED TIME (the simulator's model, seed {args.sim_seed}): {args.sim_hard_runs} hard runs "
              f"per fault of {args.sim_hard_seconds:g}s, {args.sim_runs} soft and {args.sim_runs} healthy "
              f"canaries of {args.record_seconds:g}s"]
    lines += table(sim, keys, None)
    lines += ratios(sim, keys)
    lines += ["", *orders_lost(sim, rec, live_ours, keys, unguarded, schedule, args)]
    print("\n".join(lines))
    print(f"(wall time {time.monotonic() - started:.0f}s)")
    if args.json:
        doc.update({"parameters": header, "live": rec, "live_ours": live_ours, "simulated": sim,
                    "unguarded_lost_orders": unguarded, "schedule": schedule,
                    "live_trials": [asdict(v) for v in live_verdicts]})
        with open(args.json, "w") as f:
            json.dump(d._jsonable(doc), f, indent=2)
    return 0


# ---------------------------------------------------------------- output


def parameters(args: argparse.Namespace, spec: Any, peers: list[Peer]) -> list[str]:
    a = spec.analysis
    return [
        f"Ours: {d.CRITICAL_EXAMPLE} analysis unchanged (interval {a.interval:g}s, minRequests {a.min_requests}, "
        "errorRatio maxRatio 0.02 + maxIncreaseOverStable 0.01, orderRateDrop maxDrop 0.2; sequential tests)",
        "Peers: EMULATIONS of their documented rules (benchmarks/judges.py), our bounds as plain thresholds:",
        *(f"  {x.key}: {x.label}" for x in peers),
        f"Canary: 1 pod next to {p.STABLE_PODS} stable (5%), fault from its first pod; {args.rate:g} req/s, "
        f"{d.BASE_ERROR_RATE:.1%} background 5xx, 0.3 orders per successful request; scrape {d.SCRAPE_INTERVAL:g}s",
        "Times: seconds from the canary taking traffic to the judge's rollback; inf / '>H': not within the horizon",
    ]


def _s(x: float, horizon: float | None = None) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return f">{horizon:g}" if horizon is not None else "never"
    return f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1%}"


def table(summary: dict[str, Any], keys: list[str], live_ours: dict[str, Any] | None) -> list[str]:
    head = (f"{'judge':<16} {'5xx med':>8} {'5xx p95':>8} {'ord med':>8} {'ord p95':>8} {'soft<=90s':>9} "
            f"{'soft<=10m':>9} {'soft med':>8} {'false rb':>8} {'lost med':>8}")
    out = [head, "-" * len(head)]
    h5, ho, so, he = (summary[c] for c in ("hard-5xx", "hard-orders", "soft-5xx", "healthy"))
    if live_ours is not None:
        lo5, loo, los, loh = (live_ours[c] for c in ("hard-5xx", "hard-orders", "soft-5xx", "healthy"))
        out.append(
            f"{LIVE_OURS:<16} {_s(lo5['median_s'], 90):>8} {_s(lo5['p95_s'], 90):>8} {_s(loo['median_s'], 90):>8} "
            f"{_s(loo['p95_s'], 90):>8} {los['detected']:>4}/{los['injected']:<4} {'-':>9} "
            f"{_s(los['median_s'], 90):>8} "
            f"{loh['false_rollbacks']:>3}/{loh['judged']:<4} {loo['lost_orders_median'] or 0:>8g}")
    for k in keys:
        hz = so[k]["horizon_s"]
        out.append(
            f"{k:<16} {_s(h5[k]['median_s'], h5[k]['horizon_s']):>8} {_s(h5[k]['p95_s'], h5[k]['horizon_s']):>8} "
            f"{_s(ho[k]['median_s'], ho[k]['horizon_s']):>8} {_s(ho[k]['p95_s'], ho[k]['horizon_s']):>8} "
            f"{_pct(so[k]['within_90s']):>9} {_pct(so[k]['within_horizon']):>9} {_s(so[k]['median_s'], hz):>8} "
            f"{_pct(he[k]['within_horizon']):>8} {ho[k]['lost_orders_median']:>8g}")
    out.append(f"(runs: hard {h5[keys[0]]['runs']} per fault, soft {so[keys[0]]['runs']}, healthy "
               f"{he[keys[0]]['runs']}; false rb = healthy canaries rolled back within "
               f"{he[keys[0]]['horizon_s']:g}s; lost med = orders the -99% canary lost until the rollback"
               + ("; ours, live: soft and hard time out at 90 s, healthy observed for --healthy-seconds)"
                  if live_ours is not None else ")"))
    return out


def ratios(summary: dict[str, Any], keys: list[str]) -> list[str]:
    """ours / theirs per figure (< 1: ours is faster, loses less, rolls back fewer healthy canaries)."""
    head = (f"{'ours / theirs':<16} {'5xx p95':>8} {'ord p95':>8} {'soft med':>8} {'soft<=10m':>9} "
            f"{'false rb':>8} {'lost med':>8}")
    out = [head, "-" * len(head)]

    def r(case: str, field: str, k: str) -> str:
        x = p.ratio(summary[case][p.OURS][field], summary[case][k][field])
        return "-" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2f}")

    for k in keys[1:]:
        out.append(f"{k:<16} {r('hard-5xx', 'p95_s', k):>8} {r('hard-orders', 'p95_s', k):>8} "
                   f"{r('soft-5xx', 'median_s', k):>8} {r('soft-5xx', 'within_horizon', k):>9} "
                   f"{r('healthy', 'within_horizon', k):>8} {r('hard-orders', 'lost_orders_median', k):>8}")
    return out


def orders_lost(sim: dict[str, Any], rec: dict[str, Any] | None, live_ours: dict[str, Any] | None,
                keys: list[str], unguarded: float, schedule: list[tuple[float, float]],
                args: argparse.Namespace) -> list[str]:
    plan = ", ".join(f"{w:g}% {s:g}s" for w, s in schedule)
    out = [f"ORDERS LOST, -99% release: guarded (median until the rollback, at the canary's 5%) vs unguarded "
           f"({plan}, then 100%; {args.release_minutes:g} min in all, nobody rolls back): {unguarded:.0f} orders",
           f"{'judge':<16} {'simulated':>10} {'% of ungd':>10} {'live':>8} {'% of ungd':>10}"]
    rows: list[tuple[str, float, float | None]] = []
    if live_ours is not None:
        rows.append((LIVE_OURS, math.nan, live_ours["hard-orders"]["lost_orders_median"]))
    for k in keys:
        rows.append((k, sim["hard-orders"][k]["lost_orders_median"],
                     rec["hard-orders"][k]["lost_orders_median"] if rec is not None else None))
    for name, simulated, lv in rows:
        sim_txt = "-" if math.isnan(simulated) else f"{simulated:g}"
        sim_pct = "-" if math.isnan(simulated) else f"{simulated / unguarded:.3%}"
        live_txt = "-" if lv is None else f"{lv:g}"
        live_pct = "-" if lv is None else f"{lv / unguarded:.3%}"
        out.append(f"{name:<16} {sim_txt:>10} {sim_pct:>10} {live_txt:>8} {live_pct:>10}")
    out.append(f"(goal for ours: <= 0.05% of unguarded = {0.0005 * unguarded:.1f} orders)")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("side by side (the default)")
    g.add_argument("--no-live", action="store_true", help="simulated time only (no Prometheus)")
    g.add_argument("--record-seconds", type=float, default=600.0,
                   help="seconds each recorded live canary (and each simulated soft/healthy one) stays in traffic")
    g.add_argument("--sim-runs", type=int, default=200, help="simulated soft and healthy canaries (default 200 each)")
    g.add_argument("--sim-hard-runs", type=int, default=100, help="simulated runs per hard fault (default 100)")
    g.add_argument("--sim-hard-seconds", type=float, default=420.0,
                   help="horizon of a simulated hard run (Flagger at 1m with threshold 5 decides at 360 s)")
    g.add_argument("--sim-seed", type=int, default=12, help="seed of the simulated part (default 12)")
    g.add_argument("--release-minutes", type=float, default=30.0,
                   help="length of the release for the orders-lost comparison (default 30)")
    g.add_argument("--open-pause", type=float, default=300.0,
                   help="seconds an unguarded release waits at a pause without duration before promote (300)")
