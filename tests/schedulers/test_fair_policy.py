"""Weighted fair sharing: token shares follow the weights while tenants are backlogged, and a
flooding tenant neither starves another in admission nor makes it the preemption victim."""

from __future__ import annotations

from llmserve.plugin_testing.scheduling import run_to_completion
from llmserve_schedulers.fair import FairPolicy
from scheduler_sim import make_request, make_scheduler


def _counters(policy: FairPolicy, name: str) -> dict[str, float]:
    return {dict(m.labels)["tenant"]: m.value for m in policy.metrics() if m.name == name}


def _tokens_while_backlogged(sched, tenant: str) -> dict[str, float]:
    """Tokens per tenant at the last step before ``tenant``'s queue ran empty."""
    policy = sched.policy
    last: dict[str, float] = {}

    def record(step: int) -> None:
        if any(r.hints.tenant == tenant for r in policy):
            last.update(_counters(policy, "scheduler_tenant_tokens"))

    run_to_completion(sched, max_steps=5000, on_step=record)
    return last


def test_a_flooding_tenant_gets_no_more_than_its_share():
    sched = make_scheduler(FairPolicy)
    for i in range(100):
        sched.add_request(make_request(f"a{i}", tenant="a"))
    for i in range(10):
        sched.add_request(make_request(f"b{i}", tenant="b"))
    tokens = _tokens_while_backlogged(sched, "b")
    share_a = tokens["a"] / (tokens["a"] + tokens["b"])
    assert 0.4 <= share_a <= 0.55, tokens
    finished = _counters(sched.policy, "scheduler_tenant_requests_finished")
    assert finished == {"a": 100, "b": 10}


def test_weights_two_to_one_give_two_to_one_token_shares():
    sched = make_scheduler(FairPolicy, weights={"a": 2.0})
    for i in range(60):
        sched.add_request(make_request(f"a{i}", tenant="a"))
        sched.add_request(make_request(f"b{i}", tenant="b"))
    tokens = _tokens_while_backlogged(sched, "a")
    assert 1.8 <= tokens["a"] / tokens["b"] <= 2.2, tokens


class VictimLog(FairPolicy):
    """Records, for every victim chosen, the tenants running and the victim's tenant."""

    def __init__(self, config):
        super().__init__(config)
        self.choices: list[tuple[set[str], str]] = []

    def choose_victim(self, running, ctx):
        victim = super().choose_victim(running, ctx)
        self.choices.append(({r.hints.tenant for r in running}, victim.hints.tenant))
        return victim


def test_the_flooding_tenant_is_preempted():
    # 20 blocks of 4 tokens; each request grows to 8 + 24 tokens (8 blocks): preemptions.
    sched = make_scheduler(VictimLog, num_blocks=20)
    for i in range(12):
        sched.add_request(make_request(f"a{i}", max_tokens=24, tenant="a"))

    def step(k: int) -> None:
        if k == 5:  # "b" arrives while "a" holds every slot
            for i in range(3):
                sched.add_request(make_request(f"b{i}", max_tokens=24, tenant="b"))

    finished = run_to_completion(sched, max_steps=5000, on_step=step)
    assert len(finished) == 15
    choices = sched.policy.choices
    contested = [victim for running, victim in choices if running == {"a", "b"}]
    assert len(contested) >= 5 and set(contested) == {"a"}, choices
    # "b" loses a request only when none of "a" runs.
    counts = _counters(sched.policy, "scheduler_tenant_preemptions")
    assert counts["b"] == sum(running == {"b"} for running, _ in choices)
    assert counts["a"] + counts["b"] == sched.num_preemptions == len(choices)


def test_a_returning_tenant_banks_no_idle_credit():
    sched = make_scheduler(FairPolicy)
    sched.add_request(make_request("b-early", tenant="b"))
    for i in range(100):
        sched.add_request(make_request(f"a{i}", tenant="a"))
    at_return: dict[str, float] = {}
    backlogged: dict[str, float] = {}

    def step(k: int) -> None:
        tokens = _counters(sched.policy, "scheduler_tenant_tokens")
        if k == 30:  # "b" was idle for most of the 30 steps "a" ran alone
            at_return.update(tokens)
            for i in range(20):
                sched.add_request(make_request(f"b{i}", tenant="b"))
        elif k > 30 and any(r.hints.tenant == "b" for r in sched.policy):
            backlogged.update(tokens)

    run_to_completion(sched, max_steps=5000, on_step=step)
    assert at_return["a"] > 20 * at_return["b"]
    # Had "b" kept its low usage from step 0, it would have taken every slot until it caught
    # up; starting at "a"'s usage, it shares from its return on.
    gained = {t: backlogged[t] - at_return[t] for t in ("a", "b")}
    assert 0.4 <= gained["b"] / (gained["a"] + gained["b"]) <= 0.6, gained


def test_tenants_beyond_max_tenants_share_other():
    sched = make_scheduler(FairPolicy, max_tenants=2, default_tenant="anon")
    for i, tenant in enumerate(["t0", "t1", "t2", None, "t0", "t3"]):
        sched.add_request(make_request(f"r{i}", tenant=tenant))
    assert _counters(sched.policy, "scheduler_tenant_waiting") == {"t0": 2, "t1": 1,
                                                                  "other": 3}
    run_to_completion(sched)
    assert _counters(sched.policy, "scheduler_tenant_requests_finished") == {
        "t0": 2, "t1": 1, "other": 3}
    assert _counters(sched.policy, "scheduler_tenant_waiting") == {"t0": 0, "t1": 0,
                                                                  "other": 0}


def test_requests_without_a_tenant_go_to_the_default_tenant():
    sched = make_scheduler(FairPolicy, default_tenant="anon")
    sched.add_request(make_request("r", prompt_len=8, max_tokens=4))
    run_to_completion(sched)
    # 8 prompt tokens and 3 decoded ones (the last sampled token is never computed).
    assert _counters(sched.policy, "scheduler_tenant_tokens") == {"anon": 11}
