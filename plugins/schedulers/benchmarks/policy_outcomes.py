"""What each scheduling policy buys against FCFS, on the real ``Scheduler`` and ``KVCacheManager``.

No model runs: a stand-in answers every step with one sampled token for each request whose
prompt is computed (``ignore_eos``, so every request runs to its ``max_tokens``), and a
simulated clock advances by a cost model after each step::

    step_s = STEP_FIXED_S + STEP_PER_TOKEN_S * tokens_scheduled    (5 ms + 20 us/token)

which resembles a small model on a small GPU: a 16-request decode step takes 5.3 ms, a
2,048-token prefill chunk 46 ms. Requests arrive on the same clock, by a schedule drawn from
``random.Random(SEED)``; each policy and FCFS see the identical request list. The outcomes of
the simulation are therefore deterministic; only the overhead measurement (wall clock around
``schedule()`` + ``update_from_output()``) depends on the machine.

    python plugins/schedulers/benchmarks/policy_outcomes.py [--quick] [--write-readme]

Prints a markdown table last and writes a JSON file under ``results/`` (not in ``--quick`` mode
unless ``--json`` is given). Policies are built by name from the plugin registry, so the
llmserve-schedulers plugin must be installed (``pip install --no-deps -e ./plugins/schedulers``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmserve import SamplingParams
from llmserve.config import SchedulerConfig
from llmserve.plugin_testing.scheduling import (
    Scheduler,
    SimClock,
    simulated_scheduler,
    stand_in_output,
)
from llmserve.plugins import collect_registry, get_plugin_manager
from llmserve.request import NO_HINTS, EngineCoreRequest, Request, SchedulingHints

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
README = HERE.parent / "README.md"
MARK_BEGIN, MARK_END = "<!-- outcomes:begin -->", "<!-- outcomes:end -->"
COMMAND = "python plugins/schedulers/benchmarks/policy_outcomes.py --write-readme"

SEED = 20261203
#: The cost model of one step (simulated seconds).
STEP_FIXED_S = 0.005
STEP_PER_TOKEN_S = 20e-6
BLOCK_SIZE = 16
VOCAB = 32_000
SAMPLED_TOKEN = 7
#: The engine every outcome workload runs on (a small GPU's batch).
MAX_NUM_SEQS = 16
MAX_NUM_BATCHED_TOKENS = 2048
MAX_MODEL_LEN = 4096
#: Blocks enough that only the cache-aware workload (which sets its own) is ever KV-bound.
AMPLE_BLOCKS = 8192
PLUGIN_POLICIES = ("fair", "sjf", "deadline", "cache-aware")
OVERHEAD_POLICIES = ("fcfs", "priority") + PLUGIN_POLICIES
#: The core's own figure for the same load (benchmarks/README.md, CPU section).
CORE_OVERHEAD = {
    "host_ms_median": 1.96,
    "script": "benchmarks/host_overhead.py",
    "file": "benchmarks/results/cpu/host-overhead-256.json",
    "measured": "commit c519b4d, 2026-11-27, the 2-core CPU machine",
    "what": "whole engine step at 256 running decode requests, model excluded: schedule + "
            "input preparation + sampling metadata + update + front-end output processing "
            "with detokenization; main-thread CPU time",
}


# -- the simulation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One request of a workload: when it arrives and what it asks for."""

    t: float
    rid: str
    prompt: tuple[int, ...]
    max_tokens: int
    priority: int = 0
    hints: SchedulingHints = NO_HINTS
    #: The workload's class of the request ("A"/"B", "short"/"long", "tight"/"loose"...).
    label: str = ""


@dataclass
class Record:
    """What happened to one request, on the simulated clock."""

    arrival: float
    label: str
    first_token: float | None = None
    finish: float | None = None

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def latency(self) -> float:
        return self.finish - self.arrival


@dataclass
class SimResult:
    records: dict[str, Record]
    num_steps: int
    makespan_s: float
    num_preemptions: int
    prefix_hit_rate: float
    #: Per step: (tokens scheduled per label, labels with a waiting request before the step,
    #: running requests per label after scheduling it).
    steps: list[tuple[dict[str, int], frozenset[str], dict[str, int]]] = field(
        default_factory=list)


def policy_classes() -> dict[str, type]:
    return collect_registry(get_plugin_manager(), "llmserve_scheduling_policies")


def make_scheduler(policy: str, *, num_blocks: int = AMPLE_BLOCKS, max_num_seqs: int = MAX_NUM_SEQS,
                   max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
                   policy_config: dict | None = None,
                   classes: dict[str, type] | None = None) -> Scheduler:
    classes = classes if classes is not None else policy_classes()
    if policy not in classes:
        raise SystemExit(f"policy {policy!r} is not installed (installed: {sorted(classes)}); "
                         f"pip install --no-deps -e ./plugins/schedulers")
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=MAX_MODEL_LEN, policy=policy,
                             policy_config=policy_config or {})
    return simulated_scheduler(classes[policy](config), num_blocks, BLOCK_SIZE)


def make_request(a: Arrival) -> Request:
    params = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, detokenize=False)
    return Request(EngineCoreRequest(a.rid, list(a.prompt), params, arrival_time=a.t,
                                     priority=a.priority, hints=a.hints), MAX_MODEL_LEN)


def step_cost_s(num_tokens: int) -> float:
    return STEP_FIXED_S + STEP_PER_TOKEN_S * num_tokens


def simulate(scheduler: Scheduler, arrivals: Sequence[Arrival], track_labels: bool = False,
             max_steps: int = 1_000_000) -> SimResult:
    """Run ``arrivals`` to completion; the clock jumps over idle gaps between arrivals."""
    clock: SimClock = scheduler.clock
    pending = deque(sorted(arrivals, key=lambda a: a.t))
    records = {a.rid: Record(a.t, a.label) for a in arrivals}
    live: dict[str, Request] = {}
    steps: list[tuple[dict[str, int], frozenset[str], dict[str, int]]] = []
    num_steps = 0
    while pending or scheduler.has_unfinished_requests():
        if not scheduler.has_unfinished_requests() and pending[0].t > clock.now:
            clock.now = pending[0].t
        while pending and pending[0].t <= clock.now:
            request = make_request(pending.popleft())
            live[request.request_id] = request
            scheduler.add_request(request)
        if track_labels:
            backlogged = frozenset(records[r.request_id].label for r in scheduler.policy)
        so = scheduler.schedule()
        if track_labels:
            tokens: dict[str, int] = {}
            for rid, n in so.num_scheduled_tokens.items():
                label = records[rid].label
                tokens[label] = tokens.get(label, 0) + n
            running: dict[str, int] = {}
            for r in scheduler.running:
                label = records[r.request_id].label
                running[label] = running.get(label, 0) + 1
            steps.append((tokens, backlogged, running))
        clock.advance(step_cost_s(so.total_num_scheduled_tokens))
        outputs = scheduler.update_from_output(so, stand_in_output(scheduler, so, SAMPLED_TOKEN))
        for out in outputs:
            if out.finish_reason is not None:
                record = records[out.request_id]
                record.finish = clock.now
                record.first_token = live.pop(out.request_id).first_token_time
        num_steps += 1
        if num_steps >= max_steps:
            raise RuntimeError(f"still running after {max_steps} steps")
    unfinished = [rid for rid, r in records.items() if r.finish is None or r.first_token is None]
    if unfinished:
        raise RuntimeError(f"{len(unfinished)} requests did not finish normally: {unfinished[:5]}")
    return SimResult(records, num_steps, clock.now, scheduler.num_preemptions,
                     scheduler.kv_cache_manager.prefix_cache_stats.hit_rate, steps)


# -- workloads --------------------------------------------------------------------------------


def _tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    """Random token ids: distinct requests never share a prefix by accident."""
    return tuple(rng.choices(range(100, VOCAB), k=n))


def _poisson_times(rng: random.Random, n: int, rate: float) -> list[float]:
    t, times = 0.0, []
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass(frozen=True)
class Sizes:
    """Workload sizes (``FULL`` for the benchmark, ``QUICK`` for the test)."""

    fair_big: int = 200
    fair_small: int = 20
    priority: int = 300
    sjf: int = 400
    deadline: int = 300
    cache_groups: int = 8
    cache_per_group: int = 32
    overhead_warmup: int = 200
    overhead_steps: int = 2000


FULL = Sizes()
QUICK = Sizes(fair_big=30, fair_small=3, priority=40, sjf=50, deadline=40, cache_groups=4,
              cache_per_group=6, overhead_warmup=24, overhead_steps=10)
#: Offered loads (requests per simulated second), each above what the engine serves of its
#: mix (FCFS serves 18-30 req/s over these runs: ``throughput_req_s`` in the JSON), so queues
#: build while requests arrive, then drain.
FAIR_RATE, PRIORITY_RATE, SJF_RATE, DEADLINE_RATE, CACHE_RATE = 200.0, 24.0, 30.0, 24.0, 100.0
TIGHT_TTFT_S, LOOSE_TTFT_S, TIGHT_SHARE = 0.5, 10.0, 0.3
CACHE_PREFIX, CACHE_SUFFIX, CACHE_OUT = 512, 32, 32
#: Cache-aware workload: 160 blocks (2,560 tokens) hold 5 of the 8 groups' 512-token
#: prefixes with nothing running.
CACHE_BLOCKS = 160


def _mixed_request(rng: random.Random) -> tuple[tuple[int, ...], int]:
    """Chat-like request: prompt 64-512 tokens, 32-256 new tokens."""
    return _tokens(rng, rng.randint(64, 512)), rng.randint(32, 256)


def fair_workload(s: Sizes) -> list[Arrival]:
    """Tenant A sends 10x the requests of tenant B, interleaved (every 11th is B's), all
    within about a second: far above what the engine serves, so both stay backlogged."""
    rng = random.Random(SEED + 1)
    n = s.fair_big + s.fair_small
    stride = n // s.fair_small
    out = []
    for i, t in enumerate(_poisson_times(rng, n, FAIR_RATE)):
        tenant = "B" if i % stride == stride - 1 and i // stride < s.fair_small else "A"
        prompt, max_tokens = _mixed_request(rng)
        out.append(Arrival(t, f"f{i}", prompt, max_tokens,
                           hints=SchedulingHints(tenant=tenant), label=tenant))
    return out


def priority_workload(s: Sizes) -> list[Arrival]:
    """20% high priority (0), 80% low (1): lower values run first under PriorityPolicy."""
    rng = random.Random(SEED + 2)
    out = []
    for i, t in enumerate(_poisson_times(rng, s.priority, PRIORITY_RATE)):
        high = rng.random() < 0.2
        prompt, max_tokens = _mixed_request(rng)
        out.append(Arrival(t, f"p{i}", prompt, max_tokens, priority=0 if high else 1,
                           label="high" if high else "low"))
    return out


def sjf_workload(s: Sizes) -> list[Arrival]:
    """Bimodal: 80% short (32-128 prompt, 16-64 out), 20% long (1,024-2,048 prompt, 256-512
    out)."""
    rng = random.Random(SEED + 3)
    out = []
    for i, t in enumerate(_poisson_times(rng, s.sjf, SJF_RATE)):
        if rng.random() < 0.8:
            prompt, max_tokens, label = (_tokens(rng, rng.randint(32, 128)),
                                         rng.randint(16, 64), "short")
        else:
            prompt, max_tokens, label = (_tokens(rng, rng.randint(1024, 2048)),
                                         rng.randint(256, 512), "long")
        out.append(Arrival(t, f"s{i}", prompt, max_tokens, label=label))
    return out


def deadline_workload(s: Sizes) -> list[Arrival]:
    """30% interactive requests (TTFT target 0.5 s), the rest batch-like (10 s)."""
    rng = random.Random(SEED + 4)
    out = []
    for i, t in enumerate(_poisson_times(rng, s.deadline, DEADLINE_RATE)):
        tight = rng.random() < TIGHT_SHARE
        prompt, max_tokens = _mixed_request(rng)
        target = TIGHT_TTFT_S if tight else LOOSE_TTFT_S
        out.append(Arrival(t, f"d{i}", prompt, max_tokens,
                           hints=SchedulingHints(ttft_target_s=target),
                           label="tight" if tight else "loose"))
    return out


def cache_workload(s: Sizes) -> list[Arrival]:
    """Groups sharing a 512-token prefix (a system prompt or document) + a unique 32-token
    suffix, 32 new tokens; groups in random order."""
    rng = random.Random(SEED + 5)
    prefixes = [_tokens(rng, CACHE_PREFIX) for _ in range(s.cache_groups)]
    groups = [g for g in range(s.cache_groups) for _ in range(s.cache_per_group)]
    rng.shuffle(groups)
    times = _poisson_times(rng, len(groups), CACHE_RATE)
    return [Arrival(t, f"c{i}", prefixes[g] + _tokens(rng, CACHE_SUFFIX), CACHE_OUT, label=f"g{g}")
            for i, (t, g) in enumerate(zip(times, groups))]


# -- outcomes ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _common(r: SimResult) -> dict[str, Any]:
    return {"steps": r.num_steps, "makespan_s": round(r.makespan_s, 4),
            "preemptions": r.num_preemptions,
            "throughput_req_s": round(len(r.records) / r.makespan_s, 3)}


def fair_outcome(r: SimResult) -> dict[str, Any]:
    """Tokens computed (prefill + decode) in the steps that start with a request of tenant B
    waiting; over the same steps, Jain's index of x_A = tokens_A / w_A and x_B = tokens_B / w_B
    (equal weights w = 1: both tenants want more than half the engine then, so their fair
    shares are equal), J = (x_A + x_B)^2 / (2 (x_A^2 + x_B^2)): 1 is an even split, 0.5 one
    tenant taking everything."""
    tok = {"A": 0, "B": 0}
    num_steps = num_a_waiting = num_b_running = 0
    for per_label, backlogged, running in r.steps:
        if "B" not in backlogged:
            continue
        num_steps += 1
        num_a_waiting += "A" in backlogged
        num_b_running += running.get("B", 0)
        for t in tok:
            tok[t] += per_label.get(t, 0)
    total = tok["A"] + tok["B"]
    xa, xb = tok["A"], tok["B"]
    jain = (xa + xb) ** 2 / (2 * (xa * xa + xb * xb)) if total else 0.0
    b = [rec for rec in r.records.values() if rec.label == "B"]
    return {"small_tenant_share": round(tok["B"] / total, 4) if total else 0.0,
            "jain_index": round(jain, 4), "backlogged_steps": num_steps,
            "big_tenant_waiting_steps": num_a_waiting, "tokens_in_interval": tok,
            "small_tenant_running_mean": round(num_b_running / num_steps, 2) if num_steps else 0,
            "small_tenant_mean_latency_s": round(statistics.fmean(x.latency for x in b), 4),
            **_common(r)}


def priority_outcome(r: SimResult) -> dict[str, Any]:
    high = [x.ttft for x in r.records.values() if x.label == "high"]
    low = [x.ttft for x in r.records.values() if x.label == "low"]
    return {"high_ttft_mean_s": round(statistics.fmean(high), 4),
            "high_ttft_p90_s": round(percentile(high, 90), 4),
            "low_ttft_mean_s": round(statistics.fmean(low), 4), "num_high": len(high),
            **_common(r)}


def sjf_outcome(r: SimResult) -> dict[str, Any]:
    lat = [x.latency for x in r.records.values()]
    long_ = [x.latency for x in r.records.values() if x.label == "long"]
    short = [x.latency for x in r.records.values() if x.label == "short"]
    return {"latency_mean_s": round(statistics.fmean(lat), 4),
            "short_latency_mean_s": round(statistics.fmean(short), 4),
            "long_latency_mean_s": round(statistics.fmean(long_), 4),
            "long_latency_p99_s": round(percentile(long_, 99), 4),
            "long_latency_max_s": round(max(long_), 4), "num_long": len(long_), **_common(r)}


def deadline_outcome(r: SimResult) -> dict[str, Any]:
    target = {"tight": TIGHT_TTFT_S, "loose": LOOSE_TTFT_S}
    met = {k: [x.ttft <= target[k] for x in r.records.values() if x.label == k] for k in target}
    every = met["tight"] + met["loose"]
    return {"met_share": round(sum(every) / len(every), 4),
            "tight_met_share": round(sum(met["tight"]) / len(met["tight"]), 4),
            "loose_met_share": round(sum(met["loose"]) / len(met["loose"]), 4),
            "num_tight": len(met["tight"]), **_common(r)}


def cache_outcome(r: SimResult) -> dict[str, Any]:
    return {"prefix_hit_rate": round(r.prefix_hit_rate, 4),
            "latency_mean_s": round(statistics.fmean(x.latency for x in r.records.values()), 4),
            **_common(r)}


@dataclass(frozen=True)
class Workload:
    name: str
    policy: str
    build: Callable[[Sizes], list[Arrival]]
    outcome: Callable[[SimResult], dict[str, Any]]
    num_blocks: int = AMPLE_BLOCKS
    track_labels: bool = False
    max_num_seqs: int = MAX_NUM_SEQS


#: The fair workload again with 64 sequences: the small tenant's 20 requests can then hold at
#: most 20 of 64 decode slots, and ``fair`` acts on admission only (it never preempts a
#: tenant to rebalance), so its share stays below the target there.
WIDE_BATCH = 64

WORKLOADS = (
    Workload("fair", "fair", fair_workload, fair_outcome, track_labels=True),
    Workload("fair-64", "fair", fair_workload, fair_outcome, track_labels=True,
             max_num_seqs=WIDE_BATCH),
    Workload("priority", "priority", priority_workload, priority_outcome),
    Workload("sjf", "sjf", sjf_workload, sjf_outcome),
    Workload("deadline", "deadline", deadline_workload, deadline_outcome),
    Workload("cache-aware", "cache-aware", cache_workload, cache_outcome, num_blocks=CACHE_BLOCKS),
)


def run_outcomes(sizes: Sizes = FULL) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> {"fcfs": outcome, policy: outcome}; deterministic."""
    classes = policy_classes()
    results = {}
    for w in WORKLOADS:
        arrivals = w.build(sizes)
        results[w.name] = {}
        for policy in ("fcfs", w.policy):
            sched = make_scheduler(policy, num_blocks=w.num_blocks,
                                   max_num_seqs=w.max_num_seqs, classes=classes)
            results[w.name][policy] = w.outcome(simulate(sched, arrivals, w.track_labels))
    return results


# -- overhead (wall clock) --------------------------------------------------------------------

OVH_RUNNING, OVH_WAITING = 256, 1024
OVH_TENANTS, OVH_GROUPS, OVH_PREFIX = 8, 16, 96


class OverheadLoad:
    """One policy's scheduler kept at 256 running decode requests and 1,024 waiting.

    Every request carries everything any policy reads: a tenant (8), a TTFT target (0.5 or
    10 s), a priority (0 or 1), and a prompt of 128 tokens whose first 96 are one of 16 shared
    prefixes. Prompts are 128 tokens and outputs 64-512, so about one request finishes and one
    is admitted per step: decode dominates, and the queue's admission path runs every step.
    """

    def __init__(self, policy: str, classes: dict[str, type]) -> None:
        self.scheduler = make_scheduler(policy, num_blocks=OVH_RUNNING * 48,
                                        max_num_seqs=OVH_RUNNING, classes=classes)
        self.rng = random.Random(SEED + 6)  # the same stream for every policy
        self.prefixes = [_tokens(self.rng, OVH_PREFIX) for _ in range(OVH_GROUPS)]
        self.num_made = 0
        self.schedule_s: list[float] = []
        self.update_s: list[float] = []
        #: Requests and tokens each timed step scheduled.
        self.batch_sizes: list[int] = []
        self.num_tokens: list[int] = []

    def _top_up(self) -> None:
        sched, rng = self.scheduler, self.rng
        while sched.num_waiting < OVH_WAITING:
            i = self.num_made
            self.num_made += 1
            hints = SchedulingHints(tenant=f"t{i % OVH_TENANTS}",
                                    ttft_target_s=TIGHT_TTFT_S if i % 3 == 0 else LOOSE_TTFT_S)
            prompt = self.prefixes[rng.randrange(OVH_GROUPS)] + _tokens(rng, 128 - OVH_PREFIX)
            sched.add_request(make_request(Arrival(
                sched.clock(), f"o{i}", prompt, rng.randint(64, 512), priority=i % 2, hints=hints)))

    def step(self, timed: bool) -> None:
        self._top_up()
        sched = self.scheduler
        t0 = time.perf_counter()
        so = sched.schedule()
        t1 = time.perf_counter()
        runner_output = stand_in_output(sched, so, SAMPLED_TOKEN)
        sched.clock.advance(step_cost_s(so.total_num_scheduled_tokens))
        t2 = time.perf_counter()
        sched.update_from_output(so, runner_output)
        t3 = time.perf_counter()
        if timed:
            self.schedule_s.append(t1 - t0)
            self.update_s.append(t3 - t2)
            self.batch_sizes.append(len(so.num_scheduled_tokens))
            self.num_tokens.append(so.total_num_scheduled_tokens)


def measure_overhead(sizes: Sizes = FULL, policies: Sequence[str] = OVERHEAD_POLICIES,
                     rounds: int = 20) -> dict[str, dict[str, float]]:
    """Median wall-clock ms of schedule() + update_from_output() per step for each policy.

    The policies take turns (``rounds`` blocks of steps each) so that drift in the machine's
    speed reaches all of them alike.
    """
    classes = policy_classes()
    loads = {p: OverheadLoad(p, classes) for p in policies}
    for load in loads.values():
        for _ in range(sizes.overhead_warmup):
            load.step(timed=False)
    gc.collect()
    per_round = max(1, sizes.overhead_steps // rounds)
    for _ in range(rounds):
        for load in loads.values():
            for _ in range(per_round):
                load.step(timed=True)
    out = {}
    for p, load in loads.items():
        total = [a + b for a, b in zip(load.schedule_s, load.update_s)]
        out[p] = {"ms_per_step_median": round(1e3 * statistics.median(total), 4),
                  "ms_per_step_p90": round(1e3 * percentile(total, 90), 4),
                  "schedule_ms_median": round(1e3 * statistics.median(load.schedule_s), 4),
                  "update_ms_median": round(1e3 * statistics.median(load.update_s), 4),
                  "steps": len(total), "batch_min": min(load.batch_sizes),
                  "batch_median": statistics.median(load.batch_sizes),
                  "tokens_per_step_mean": round(statistics.fmean(load.num_tokens), 1),
                  "waiting_at_end": load.scheduler.num_waiting}
    base = out["fcfs"]["ms_per_step_median"]
    for m in out.values():
        m["ms_vs_fcfs"] = round(m["ms_per_step_median"] - base, 4)
    return out


# -- report -----------------------------------------------------------------------------------


def _s(x: float) -> str:
    return f"{x:.3f} s"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def outcome_rows(o: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, ...]]:
    """(policy, metric, fcfs, policy, target, holds) rows of the simulated outcomes."""
    rows = []
    f, p = o["fair"]["fcfs"], o["fair"]["fair"]
    share_ok = p["small_tenant_share"] >= 0.40 and f["small_tenant_share"] < 0.40
    rows.append(("fair", "small tenant's share of tokens while it waits",
                 _pct(f["small_tenant_share"]), _pct(p["small_tenant_share"]),
                 ">= 40% (fcfs < 40%)", "yes" if share_ok else "no"))
    rows.append(("fair", "Jain's index, tokens / weight, same steps",
                 f"{f['jain_index']:.3f}", f"{p['jain_index']:.3f}", "higher",
                 "yes" if p["jain_index"] > f["jain_index"] else "no"))
    f, p = o["fair-64"]["fcfs"], o["fair-64"]["fair"]
    share_ok = p["small_tenant_share"] >= 0.40 and f["small_tenant_share"] < 0.40
    rows.append(("fair", f"same, {WIDE_BATCH} sequences: small tenant's share / Jain's index",
                 f"{_pct(f['small_tenant_share'])} / {f['jain_index']:.3f}",
                 f"{_pct(p['small_tenant_share'])} / {p['jain_index']:.3f}",
                 ">= 40% (fcfs < 40%)", "yes" if share_ok else "no"))
    f, p = o["priority"]["fcfs"], o["priority"]["priority"]
    rows.append(("priority", "high-priority TTFT mean / p90",
                 f"{_s(f['high_ttft_mean_s'])} / {_s(f['high_ttft_p90_s'])}",
                 f"{_s(p['high_ttft_mean_s'])} / {_s(p['high_ttft_p90_s'])}", "lower",
                 "yes" if p["high_ttft_mean_s"] < f["high_ttft_mean_s"]
                 and p["high_ttft_p90_s"] < f["high_ttft_p90_s"] else "no"))
    f, p = o["sjf"]["fcfs"], o["sjf"]["sjf"]
    rows.append(("sjf", "mean end-to-end latency", _s(f["latency_mean_s"]),
                 _s(p["latency_mean_s"]), "lower",
                 "yes" if p["latency_mean_s"] < f["latency_mean_s"] else "no"))
    rows.append(("sjf", "long jobs: p99 / max latency",
                 f"{_s(f['long_latency_p99_s'])} / {_s(f['long_latency_max_s'])}",
                 f"{_s(p['long_latency_p99_s'])} / {_s(p['long_latency_max_s'])}",
                 "bounded (reported)", "—"))
    f, p = o["deadline"]["fcfs"], o["deadline"]["deadline"]
    def met(m: dict) -> str:
        return (f"{_pct(m['met_share'])} ({_pct(m['tight_met_share'])} / "
                f"{_pct(m['loose_met_share'])})")
    name = f"TTFT targets met (all; tight {TIGHT_TTFT_S:g} s / loose {LOOSE_TTFT_S:g} s)"
    rows.append(("deadline", name, met(f), met(p), "higher",
                 "yes" if p["met_share"] > f["met_share"] else "no"))
    f, p = o["cache-aware"]["fcfs"], o["cache-aware"]["cache-aware"]
    rows.append(("cache-aware", "prefix-cache hit rate", _pct(f["prefix_hit_rate"]),
                 _pct(p["prefix_hit_rate"]), "higher",
                 "yes" if p["prefix_hit_rate"] > f["prefix_hit_rate"] else "no"))
    return rows


def overhead_rows(ovh: dict[str, dict[str, float]]) -> list[tuple[str, ...]]:
    base = ovh["fcfs"]["ms_per_step_median"]
    rows = []
    for p, m in ovh.items():
        if p == "fcfs":
            continue
        d = m["ms_vs_fcfs"]
        rows.append((p, "overhead: schedule + update, ms/step (wall clock)", f"{base:.3f} ms",
                     f"{m['ms_per_step_median']:.3f} ms ({d:+.3f})", "<= +0.3 ms",
                     "yes" if d <= 0.3 else "no"))
    return rows


def reference_row() -> tuple[str, ...]:
    """The core's own step-overhead figure, beside the policies' (not measured here)."""
    return ("core (reference)", ("host overhead of a whole engine step, 256 decode requests "
            "(benchmarks/README.md, CPU time)"), f"{CORE_OVERHEAD['host_ms_median']:.2f} ms",
            "—", "<= 2 ms (the core's)", "—")


def render_table(outcomes: dict, overhead: dict) -> str:
    rows = outcome_rows(outcomes) + overhead_rows(overhead) + [reference_row()]
    lines = ["| policy | outcome | FCFS | policy | target | holds |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"kind": "cpu", "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch_version}


def git_commit() -> str:
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             check=False)
        return run.stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "core", "plugins/schedulers")
    return commit + ("+uncommitted" if dirty else "")


def _wrap(text: str, bullet: bool = False) -> str:
    if bullet:
        return textwrap.fill(text, 96, initial_indent="- ", subsequent_indent="  ")
    return textwrap.fill(text, 96)


def method_text(sizes: Sizes, mach: dict) -> str:
    """The README's method paragraph: what ran, and how to run it again."""
    s = sizes
    intro = (
        f"Simulated on the real `Scheduler` and `KVCacheManager` (block size {BLOCK_SIZE}, "
        f"prefix caching on) with no model: each step a stand-in returns one sampled token for "
        f"every request whose prompt is computed (`ignore_eos`: requests run to `max_tokens`), "
        f"and the scheduler's simulated clock advances by {STEP_FIXED_S * 1e3:g} ms + "
        f"{STEP_PER_TOKEN_S * 1e6:g} µs per token scheduled (a small model on a small GPU). "
        f"Engine: `max_num_seqs={MAX_NUM_SEQS}`, `max_num_batched_tokens="
        f"{MAX_NUM_BATCHED_TOKENS}`, {AMPLE_BLOCKS} KV blocks. Poisson arrivals and random "
        f"prompt tokens from `random.Random({SEED} + k)`; each policy and FCFS run the identical "
        f"requests, policies with their default options. Every offered rate is above what the "
        f"engine serves of its mix (FCFS serves 18-30 req/s), so queues build, then drain. "
        f"These outcomes are deterministic (simulated clock).")
    workloads = [
        (f"**fair**: tenant A {s.fair_big} and tenant B {s.fair_small} requests (every 11th is "
        f"B's) at {FAIR_RATE:g} req/s, prompts 64-512 tokens, 32-256 new. The share is B's part "
        f"of the tokens computed (prefill + decode) in the steps that start with a B request "
        f"waiting; Jain's index is (x_A + x_B)² / (2 (x_A² + x_B²)) over x = tokens / weight in "
        f"those same steps (equal weights: both tenants want more than half the engine then)."),
        (f"**fair-{WIDE_BATCH}**: the same requests with `max_num_seqs={WIDE_BATCH}`. B is "
        f"then backlogged only while the slots are held by A's requests admitted before B's "
        f"arrived; `fair` acts on admission only (it never preempts to rebalance), so B's "
        f"waiting requests enter one by one as A's finish and its share stays below the target "
        f"(`small_tenant_running_mean` in the JSON: B's running requests in those steps)."),
        (f"**priority**: {s.priority} requests at {PRIORITY_RATE:g} req/s, 20% priority 0 (runs "
        f"first) and 80% priority 1, same lengths."),
        (f"**sjf**: {s.sjf} requests at {SJF_RATE:g} req/s, 80% short (32-128 prompt, 16-64 "
        f"new), 20% long (1,024-2,048 prompt, 256-512 new)."),
        (f"**deadline**: {s.deadline} requests at {DEADLINE_RATE:g} req/s, {TIGHT_SHARE:.0%} "
        f"with a TTFT target of {TIGHT_TTFT_S:g} s, the rest {LOOSE_TTFT_S:g} s."),
        (f"**cache-aware**: {s.cache_groups} groups × {s.cache_per_group} requests, each a "
        f"shared {CACHE_PREFIX}-token prefix + {CACHE_SUFFIX} unique tokens, {CACHE_OUT} new, "
        f"groups shuffled, {CACHE_RATE:g} req/s, on {CACHE_BLOCKS} blocks "
        f"({CACHE_BLOCKS * BLOCK_SIZE:,} tokens: not all {s.cache_groups} prefixes fit); hit "
        f"rate is `prefix_cache_stats.hit_rate` over the run."),
        (f"**overhead** (the only wall-clock rows): `time.perf_counter` around `schedule()` + "
        f"`update_from_output()`, median of {s.overhead_steps} steps per policy after "
        f"{s.overhead_warmup} of warm-up, the policies taking turns, at {OVH_RUNNING} running "
        f"decode requests with {OVH_WAITING} waiting (`max_num_seqs={OVH_RUNNING}`, queue topped "
        f"up every step, about one admission a step), every request with one of "
        f"{OVH_TENANTS} tenants, a TTFT target and one of {OVH_GROUPS} shared "
        f"{OVH_PREFIX}-token prefixes; on {mach['cpu']}, {mach['cores']} cores, Python "
        f"{mach['python']}. The core's reference row is `{CORE_OVERHEAD['script']}` as "
        f"`benchmarks/README.md` reports it (`{CORE_OVERHEAD['file']}`, "
        f"{CORE_OVERHEAD['measured']}): a whole engine step's host work at 256 decode "
        f"requests (input preparation, sampling, detokenization included), CPU time, not "
        f"measured in this run."),
    ]
    return "\n".join([_wrap(intro), ""] + [_wrap(w, bullet=True) for w in workloads]
                     + ["", _wrap(f"Reproduce: `{COMMAND}` (about 15 s on this machine; "
                                  f"`--quick` runs the test's small sizes).")])


def write_readme(table: str, method: str, path: Path = README) -> None:
    text = path.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        raise SystemExit(f"{path} lacks the markers {MARK_BEGIN} ... {MARK_END}")
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n{table}\n\n{method}\n{MARK_END}{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (the test's)")
    ap.add_argument("--json", help="result file (default: results/<date>-cpu-outcomes.json; "
                                   "none in --quick mode)")
    ap.add_argument("--write-readme", action="store_true",
                    help=f"replace the text between the markers in {README.relative_to(REPO)}")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    outcomes = run_outcomes(sizes)
    t_sim = time.perf_counter() - t0
    overhead = measure_overhead(sizes)
    mach = machine()
    table = render_table(outcomes, overhead)
    date = datetime.date.today().isoformat()
    result = {"workload": "scheduling-policy-outcomes", "date": date, "commit": git_commit(),
              "command": " ".join([Path(sys.argv[0]).name] + list(argv or sys.argv[1:])),
              "machine": mach, "seed": SEED, "sizes": asdict(sizes),
              "cost_model": {"step_fixed_s": STEP_FIXED_S, "step_per_token_s": STEP_PER_TOKEN_S},
              "engine": {"max_num_seqs": MAX_NUM_SEQS, "max_num_batched_tokens":
                         MAX_NUM_BATCHED_TOKENS, "block_size": BLOCK_SIZE,
                         "num_blocks": AMPLE_BLOCKS, "cache_aware_num_blocks": CACHE_BLOCKS},
              "outcomes_simulated": outcomes, "overhead_wall_clock": overhead,
              "core_overhead_reference": CORE_OVERHEAD,
              "simulation_wall_s": round(t_sim, 2), "table": table}
    default = HERE / "results" / f"{date}-cpu-outcomes.json"
    path = args.json or (None if args.quick else str(default))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    if args.write_readme:
        write_readme(table, method_text(sizes, mach))
        print(f"updated {README}")
    print(table)


if __name__ == "__main__":
    main()
