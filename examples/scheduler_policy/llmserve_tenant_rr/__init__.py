"""Tenant round-robin: each tenant waits in its own line, and the lines take turns."""
from collections import Counter, deque

from pydantic import Field

from llmserve import hookimpl
from llmserve.scheduler.policy import PolicyMetric, PolicyOptions, SchedulingPolicy

LLMSERVE_PLUGIN_API = ">=1.2,<2"


class RoundRobinOptions(PolicyOptions):
    default_tenant: str = "anonymous"       # for requests that name no tenant
    quantum: int = Field(1, ge=1, le=64)    # admissions per turn


class TenantRoundRobin(SchedulingPolicy):
    name = "tenant-rr"
    Options = RoundRobinOptions

    def __init__(self, config):
        super().__init__(config)
        self._lines = {}                    # tenant -> deque; the first tenant has the turn
        self._turn = 0                      # admissions in the current turn
        self._admitted = Counter()          # tenant -> admissions so far

    def _tenant(self, request):
        return request.hints.tenant or self.options.default_tenant

    def add(self, request):
        self._lines.setdefault(self._tenant(request), deque()).append(request)

    def prepend(self, request):
        self._lines.setdefault(self._tenant(request), deque()).appendleft(request)

    def peek(self, ctx):
        return next(iter(self._lines.values()), ())[0]     # IndexError when empty

    def pop(self, ctx):
        tenant, line = next(iter(self._lines.items()))
        request = line.popleft()
        self._admitted[tenant] += 1
        self._turn += 1
        if not line or self._turn >= self.options.quantum:
            self._turn = 0
            del self._lines[tenant]
            if line:
                self._lines[tenant] = line  # to the back of the turn order
        return request

    def remove(self, requests):
        drop = {id(r) for r in requests}
        lines = {t: deque(r for r in q if id(r) not in drop) for t, q in self._lines.items()}
        self._lines = {t: q for t, q in lines.items() if q}

    def __len__(self):
        return sum(map(len, self._lines.values()))

    def __iter__(self):
        return (r for line in self._lines.values() for r in line)

    def choose_victim(self, running, ctx):
        held = Counter(map(self._tenant, running))  # the busiest tenant gives one up
        return max(reversed(running), key=lambda r: held[self._tenant(r)])

    def metrics(self):
        return [PolicyMetric("tenant_admitted", "Requests admitted, per tenant", "counter",
                             n, (("tenant", t),)) for t, n in self._admitted.items()]


@hookimpl
def llmserve_scheduling_policies():
    return {TenantRoundRobin.name: TenantRoundRobin}
