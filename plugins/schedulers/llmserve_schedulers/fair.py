"""Weighted fair sharing of processed tokens across tenants.

Each tenant's *usage* is the tokens the engine processed for it divided by its weight (a
virtual time, as in CFS). Admission serves the FIFO head of the backlogged tenant with the
lowest usage; preemption takes the most recently admitted request of the running tenant with
the highest usage. So a tenant that floods the queue raises only its own usage: it is served
in proportion to its weight while others are backlogged, and it is the one preempted.

Accounting happens in ``on_step`` from the tokens each request actually computed, batched over
the step with numpy. Several requests are admitted within one step before that feedback
arrives, so ``pop`` charges a provisional estimate (the tokens the request still has to
compute, capped at the step's token budget) that ``on_step`` replaces with the real count;
without it a step's admissions would all go to the tenant that was lowest at its start.

A tenant that becomes active (a request arrives while it has none waiting or running) starts
at no less than the lowest usage among active tenants, like CFS's ``min_vruntime``: idleness
earns no credit to spend in a burst later.

Tenants are ``request.hints.tenant`` (None: ``default_tenant``). To bound the per-tenant state
and the label cardinality of the metrics, only the first ``max_tenants`` distinct tenants are
tracked by name; later ones share one tenant named ``"other"`` (weight ``weights["other"]`` or
``default_weight``), as does a tenant actually named ``"other"``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from typing import Annotated

import numpy as np
from pydantic import Field

from llmserve.config import SchedulerConfig
from llmserve.request import Request
from llmserve.scheduler.policy import (
    PolicyMetric,
    PolicyOptions,
    SchedulingContext,
    SchedulingPolicy,
    StepFeedback,
)

#: The tenant that tenants beyond ``max_tenants`` share.
OTHER_TENANT = "other"


class FairPolicy(SchedulingPolicy):
    """Lowest weighted usage first across tenants, FIFO within a tenant."""

    name = "fair"

    class Options(PolicyOptions):
        #: Tenant -> weight; a tenant gets a share of tokens proportional to its weight.
        weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
        #: Weight of tenants not in ``weights``.
        default_weight: float = Field(1.0, gt=0)
        #: Tenant of requests that name none.
        default_tenant: str = Field("default", min_length=1)
        #: Tenants tracked by name; later ones share ``"other"``. 1000 keeps the metrics at
        #: most ~4000 series and every per-step array operation in the microseconds.
        max_tenants: int = Field(1000, ge=1)

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        options = self.options
        self._weights = options.weights
        self._default_weight = options.default_weight
        self._default_tenant = options.default_tenant
        self._max_tenants = options.max_tenants
        self._max_estimate = config.max_num_batched_tokens
        # Per tenant, by index in order of first appearance.
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._queues: list[deque[Request]] = []
        self._weight = np.zeros(0)
        #: Processed tokens / weight, provisional charges included.
        self._usage = np.zeros(0)
        self._tokens = np.zeros(0)
        self._num_finished = np.zeros(0, dtype=np.int64)
        self._num_preemptions = np.zeros(0, dtype=np.int64)
        self._num_waiting = np.zeros(0, dtype=np.int64)
        #: Requests waiting or running.
        self._num_active = np.zeros(0, dtype=np.int64)
        #: Lowest usage among active tenants when last seen; never decreases.
        self._floor = 0.0
        # Per request, by id, from add until finished.
        self._tenant_of: dict[str, int] = {}
        #: Usage charged at pop and not yet replaced by the step's real tokens.
        self._provisional: dict[str, float] = {}
        self._num_queued = 0

    # -- tenants ------------------------------------------------------------------------

    def _tenant_index(self, request: Request) -> int:
        name = request.hints.tenant or self._default_tenant
        index = self._index.get(name)
        if index is not None:
            return index
        if len(self._names) >= self._max_tenants:
            name = OTHER_TENANT
            index = self._index.get(name)
            if index is not None:
                return index
        return self._new_tenant(name)

    def _new_tenant(self, name: str) -> int:
        index = len(self._names)
        self._names.append(name)
        self._index[name] = index
        self._queues.append(deque())
        self._weight = np.append(self._weight, self._weights.get(name, self._default_weight))
        self._usage = np.append(self._usage, self._floor)
        self._tokens = np.append(self._tokens, 0.0)
        self._num_finished = np.append(self._num_finished, 0)
        self._num_preemptions = np.append(self._num_preemptions, 0)
        self._num_waiting = np.append(self._num_waiting, 0)
        self._num_active = np.append(self._num_active, 0)
        return index

    def _min_active_usage(self) -> float:
        """The lowest usage among active tenants (the floor when none is), raising the floor."""
        active = self._num_active > 0
        if active.any():
            self._floor = max(self._floor, float(self._usage[active].min()))
        return self._floor

    def _tenant_indices(self, request_ids: Iterable[str], count: int) -> np.ndarray:
        """Tenant index of each id, -1 for ids not tracked (finished, or never queued here)."""
        return np.fromiter(map(self._tenant_of.get, request_ids, repeat(-1)), np.intp, count)

    # -- the queue ----------------------------------------------------------------------

    def _track(self, request: Request) -> int:
        """The request's tenant index, registering the request (and activating its tenant)
        the first time it is queued."""
        index = self._tenant_of.get(request.request_id)
        if index is None:
            index = self._tenant_index(request)
            if not self._num_active[index]:
                self._usage[index] = max(self._usage[index], self._min_active_usage())
            self._num_active[index] += 1
            self._tenant_of[request.request_id] = index
        self._num_waiting[index] += 1
        self._num_queued += 1
        return index

    def add(self, request: Request) -> None:
        self._queues[self._track(request)].append(request)

    def prepend(self, request: Request) -> None:
        self._queues[self._track(request)].appendleft(request)

    def _next_tenant(self) -> int:
        if not self._num_queued:
            raise IndexError("peek from an empty queue")
        return int(np.where(self._num_waiting > 0, self._usage, np.inf).argmin())

    def peek(self, ctx: SchedulingContext) -> Request:
        return self._queues[self._next_tenant()][0]

    def pop(self, ctx: SchedulingContext) -> Request:
        index = self._next_tenant()
        request = self._queues[index].popleft()
        self._num_waiting[index] -= 1
        self._num_queued -= 1
        estimate = min(request.num_tokens - request.num_computed_tokens, self._max_estimate)
        charge = estimate / self._weight[index]
        self._usage[index] += charge
        rid = request.request_id
        self._provisional[rid] = self._provisional.get(rid, 0.0) + charge
        return request

    def remove(self, requests: Iterable[Request]) -> None:
        # The requests stay active until their finish reaches on_step.
        drop = {id(r) for r in requests}
        if not drop:
            return
        for index, queue in enumerate(self._queues):
            kept = [r for r in queue if id(r) not in drop]
            if len(kept) != len(queue):
                self._num_queued -= len(queue) - len(kept)
                self._num_waiting[index] = len(kept)
                queue.clear()
                queue.extend(kept)

    def __len__(self) -> int:
        return self._num_queued

    def __iter__(self) -> Iterator[Request]:
        return chain.from_iterable(self._queues)

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        tenants = self._tenant_indices((r.request_id for r in running), len(running))
        # Running requests always came through add; an untracked one would rank lowest.
        usage = np.where(tenants >= 0, self._usage[tenants], -np.inf)
        heaviest = tenants[usage.argmax()]
        return running[int(np.flatnonzero(tenants == heaviest)[-1])]

    # -- accounting ---------------------------------------------------------------------

    def on_step(self, feedback: StepFeedback) -> None:
        num_tenants = len(self._names)
        scheduled = feedback.num_scheduled_tokens
        provisional = self._provisional
        settled = provisional.keys() & scheduled.keys()
        if settled:
            tenants = self._tenant_indices(settled, len(settled))
            charges = np.fromiter(map(provisional.pop, settled), np.float64, len(settled))
            self._usage -= np.bincount(tenants, charges, minlength=num_tenants)
        if scheduled:
            tenants = self._tenant_indices(scheduled.keys(), len(scheduled))
            tokens = np.fromiter(scheduled.values(), np.float64, len(scheduled))
            # Under asynchronous scheduling a request that finished may still have had a
            # token in flight; it is no longer tracked and that token goes uncharged.
            tracked = tenants >= 0
            processed = np.bincount(tenants[tracked], tokens[tracked], minlength=num_tenants)
            self._tokens += processed
            self._usage += processed / self._weight
        preempted = feedback.preempted
        if preempted:
            tenants = self._tenant_indices(preempted, len(preempted))
            self._num_preemptions += np.bincount(tenants[tenants >= 0], minlength=num_tenants)
        for request in feedback.finished:
            rid = request.request_id
            index = self._tenant_of.pop(rid, None)
            if index is None:
                continue  # never queued here (aborted while its grammar compiled, say)
            self._num_active[index] -= 1
            self._num_finished[index] += 1
            charge = provisional.pop(rid, None)
            if charge is not None:  # admitted, then finished before computing anything
                self._usage[index] -= charge
        self._min_active_usage()

    def metrics(self) -> list[PolicyMetric]:
        samples = []
        for index, name in enumerate(self._names):
            labels = (("tenant", name),)
            samples += [
                PolicyMetric("scheduler_tenant_tokens", "Tokens processed for the tenant.",
                             "counter", float(self._tokens[index]), labels),
                PolicyMetric("scheduler_tenant_requests_finished",
                             "Requests of the tenant that finished (aborts included).",
                             "counter", float(self._num_finished[index]), labels),
                PolicyMetric("scheduler_tenant_preemptions",
                             "Preemptions of the tenant's requests.",
                             "counter", float(self._num_preemptions[index]), labels),
                PolicyMetric("scheduler_tenant_waiting", "Requests of the tenant waiting.",
                             "gauge", float(self._num_waiting[index]), labels),
            ]
        return samples
