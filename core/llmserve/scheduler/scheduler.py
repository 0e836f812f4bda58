"""Continuous batching without phases (vLLM v1 style).

Every request carries ``num_computed_tokens``; each step gives requests tokens to close the gap
to ``num_tokens`` under a token budget and a sequence budget, running requests first. Prefill,
chunked prefill, decode and recompute after preemption are all the same operation. The runner
learns about a request once in full (``NewRequestData``) and afterwards only by diffs.

No torch here, and no formatted logging in the step loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, wait
from typing import TYPE_CHECKING, Optional

from llmserve.config import SchedulerConfig
from llmserve.request import EngineCoreOutput, Request, RequestStatus
from llmserve.sampling_params import OUTPUT_READING_FEATURES, features_of
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.scheduler.output import (
    DRAFT_PLACEHOLDER,
    CachedRequestData,
    LogprobsLists,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from llmserve.scheduler.policy import SchedulingContext, SchedulingPolicy, StepFeedback
from llmserve.spec_decode.metrics import SpecDecodingStats

if TYPE_CHECKING:
    from llmserve.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)

_RUNNING = RequestStatus.RUNNING
_STOPPED = RequestStatus.FINISHED_STOPPED
_LENGTH = RequestStatus.FINISHED_LENGTH_CAPPED
_ABORTED = RequestStatus.FINISHED_ABORTED
_AWAITING_GRAMMAR = RequestStatus.WAITING_FOR_GRAMMAR
#: How long an otherwise idle ``schedule()`` waits for a grammar to finish compiling.
_GRAMMAR_POLL_S = 0.005
#: How stale the policy's metrics in ``make_stats`` may be while requests run: the stats go
#: out with every step, and a policy with many tenants reports many samples.
_POLICY_METRICS_PERIOD_S = 0.5
#: request.extra key: prompt-logprob rows already sent (a resumed request recomputes them).
_PLP_SENT = "num_prompt_logprobs_sent"


class QueueFullError(RuntimeError):
    """The waiting queue holds ``max_waiting_requests``; retry later (servers answer 503)."""


class Scheduler:
    """Decides, each step, which requests run and how many tokens each computes."""

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        kv_cache_manager: KVCacheManager,
        policy: SchedulingPolicy,
        structured_outputs: Optional["StructuredOutputManager"] = None,
        clock: Callable[[], float] = time.monotonic,
        num_speculative_tokens: int = 0,
        num_lookahead_tokens: int = 0,
        speculate_below: Optional[int] = None,
    ) -> None:
        """``clock`` stamps step times, first scheduling and first tokens; simulations pass
        their own so that time-based policies run deterministically. With speculative
        decoding, ``num_speculative_tokens`` is k and ``num_lookahead_tokens`` the slots a
        draft model writes past the verified tokens (k, or 0 for a proposer without KV);
        ``speculate_below`` (``disable_by_batch_size``) turns drafting off while that many
        requests run.

        With asynchronous scheduling and speculation the scheduler decides the drafts itself,
        before the tokens they follow are known: each decoding request that may draft gets
        up to k draft placeholders (``DRAFT_PLACEHOLDER``), which the runner's proposer fills
        on the device, and its computed and output counts are optimistic (every draft
        accepted) until the step's outputs arrive and roll the rejected ones back."""
        self.config = scheduler_config
        self.clock = clock
        #: Compiles the grammars of constrained requests; None when the engine has no
        #: tokenizer (such requests are then refused).
        self.structured_outputs = structured_outputs
        #: Constrained requests whose grammar is still compiling, in arrival order.
        self.awaiting_grammar: list[Request] = []
        self.kv_cache_manager = kv_cache_manager
        self.policy = policy
        self.max_num_seqs = scheduler_config.max_num_seqs
        self.max_num_batched_tokens = scheduler_config.max_num_batched_tokens
        self.max_model_len = scheduler_config.max_model_len
        self.enable_chunked_prefill = scheduler_config.enable_chunked_prefill
        self.max_waiting_requests = scheduler_config.max_waiting_requests
        self.async_scheduling = scheduler_config.async_scheduling
        #: Unfinished requests by id (waiting, preempted or running).
        self.requests: dict[str, Request] = {}
        #: Running requests in scheduling order.
        self.running: list[Request] = []
        #: Finished since the last ``schedule()``; the runner drops their state.
        self.finished_req_ids: set[str] = set()
        self.num_preemptions = 0
        # Outputs of requests the scheduler itself finished (too large for the cache); they go
        # out with the next update_from_output.
        self._pending_outputs: list[EngineCoreOutput] = []
        # Feedback is built only for a policy that reads it.
        self._policy_feedback = type(policy).on_step is not SchedulingPolicy.on_step
        #: Finished since the last feedback (only while the policy takes feedback).
        self._finished_for_policy: list[Request] = []
        self._policy_metrics: list = []
        self._policy_metrics_at = float("-inf")
        self.num_lookahead_tokens = num_lookahead_tokens
        self.num_speculative_tokens = num_speculative_tokens
        self.speculate_below = speculate_below or float("inf")
        #: Drafts are placeholders chosen here (asynchronous scheduling with speculation).
        self.drafts_ahead = self.async_scheduling and num_speculative_tokens > 0
        self.spec_stats = (SpecDecodingStats(num_speculative_tokens)
                           if num_speculative_tokens else None)

    # -- intake and queries -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request; raises QueueFullError when ``max_waiting_requests`` are waiting.

        A constrained request first waits for its grammar (``WAITING_FOR_GRAMMAR``, outside the
        policy's queue); its compilation starts now, on the structured-output manager's
        threads, and ``request.grammar_future`` tells when it is done.
        """
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the scheduler")
        cap = self.max_waiting_requests
        if cap is not None and len(self.policy) + len(self.awaiting_grammar) >= cap:
            raise QueueFullError(
                f"waiting queue is full ({cap} requests, max_waiting_requests); retry later")
        constraint = request.sampling_params.structured_outputs
        if constraint is not None:
            if self.structured_outputs is None:
                raise ValueError("structured_outputs needs the model's tokenizer; this engine "
                                 "runs with skip_tokenizer_init")
            request.grammar_future = self.structured_outputs.submit(constraint)
            request.status = _AWAITING_GRAMMAR
            self.awaiting_grammar.append(request)
        else:
            request.status = RequestStatus.WAITING
            self.policy.add(request)
        self.requests[request.request_id] = request

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    def has_unfinished_requests(self) -> bool:
        """True while any request waits or runs, or finished outputs are yet to be sent."""
        return (bool(self.running) or len(self.policy) > 0 or bool(self._pending_outputs)
                or bool(self.awaiting_grammar))

    def make_stats(self) -> dict:
        stats = self.kv_cache_manager.prefix_cache_stats
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.policy) + len(self.awaiting_grammar),
            "kv_cache_usage": self.kv_cache_manager.usage,
            "prefix_cache_queries": stats.queries,
            "prefix_cache_hits": stats.hits,
            "num_preemptions": self.num_preemptions,
            "policy_metrics": self._fresh_policy_metrics(),
            **(self.spec_stats.as_dict() if self.spec_stats is not None else {}),
        }

    def _fresh_policy_metrics(self) -> list:
        """The policy's samples, refreshed at most every ``_POLICY_METRICS_PERIOD_S`` while
        requests run and always once the scheduler is idle (so final counts are exact)."""
        now = time.monotonic()
        if (now - self._policy_metrics_at >= _POLICY_METRICS_PERIOD_S
                or not self.has_unfinished_requests()):
            self._policy_metrics = self.policy.metrics()
            self._policy_metrics_at = now
        return self._policy_metrics

    def scheduling_context(self) -> SchedulingContext:
        """The state the policy decides from; ``schedule()`` takes one snapshot per call."""
        kv = self.kv_cache_manager
        return SchedulingContext(
            config=self.config, kv_cache_usage=kv.usage, num_free_blocks=kv.num_free_blocks,
            num_budget_tokens=self.max_num_batched_tokens, num_running=len(self.running),
            num_waiting=len(self.policy), now=self.clock(),
            _cached_prefix=self._cached_prefix_tokens)

    def _cached_prefix_tokens(self, request: Request) -> int:
        return self.kv_cache_manager.get_computed_blocks(request)[1]

    # -- the step -----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts.

        Invariant, after every call: each request is in exactly one of running, waiting (the
        policy's queue) or finished; the tokens scheduled sum to at most
        ``max_num_batched_tokens`` and at most ``max_num_seqs`` requests run; every scheduled
        request's block table covers its ``num_computed_tokens``, which has already been
        advanced by the tokens scheduled (the runner output then only adds sampled tokens).
        Running requests are served in order before any waiting one is admitted, and no
        request is admitted in a step that had to preempt. ``num_computed_tokens`` in the
        output's New/CachedRequestData is the count *before* this step's tokens.
        """
        if self.awaiting_grammar:
            self._queue_compiled(block=not self.running and not len(self.policy))
        kv = self.kv_cache_manager
        kv.begin_step()
        ctx = self.scheduling_context()
        budget = self.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        grammar_req_ids: list[str] = []
        # req_id -> (new block ids, num_computed_tokens before this step), in schedule order.
        scheduled_running: dict[str, tuple[list[int], int]] = {}
        new_reqs: list[NewRequestData] = []
        preempted: set[str] = set()
        #: req_id -> drafts scheduled after its last token.
        spec_tokens: dict[str, list[int]] = {}

        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            placeholders = request.num_output_placeholders
            num_new = request.num_tokens + placeholders - request.num_computed_tokens
            drafts = request.spec_token_ids
            if self.drafts_ahead:
                drafts = self._draft_placeholders(request, num_new, budget)
                num_new += len(drafts)
            elif drafts:
                # Drafts follow the last token; keep those that fit the budget and could
                # still be emitted before max_tokens.
                request.spec_token_ids = []
                room = min(budget, request.max_tokens - request.num_output_tokens) - 1
                drafts = drafts[:max(0, room)] if num_new == 1 and not placeholders else []
                num_new += len(drafts)
            if num_new > budget:
                num_new = budget
            num_new = kv.snapshot_chunk(request.num_computed_tokens, num_new)
            if num_new <= 0 or (placeholders and request.num_output_tokens + placeholders
                                >= request.max_tokens):
                # Nothing to compute, or the tokens in flight already end the request.
                i += 1
                continue
            lookahead = self._lookahead(request.num_computed_tokens + num_new)
            new_ids = kv.allocate_slots(request, num_new, num_lookahead_tokens=lookahead)
            while new_ids is None:
                if not kv.can_ever_fit(request.num_computed_tokens + num_new, num_new):
                    running.pop(i)
                    self._abort_unfittable(request)
                    break
                victim = self.policy.choose_victim(running, ctx)
                vi = running.index(victim)
                running.pop(vi)
                if vi < i:
                    i -= 1
                undone = scheduled_running.pop(victim.request_id, None)
                if undone is not None:
                    victim.num_computed_tokens = undone[1]
                    budget += num_scheduled.pop(victim.request_id)
                    spec_tokens.pop(victim.request_id, None)
                self._preempt(victim, preempted)
                if victim is request:
                    break
                new_ids = kv.allocate_slots(request, num_new, num_lookahead_tokens=lookahead)
            if new_ids is None:
                continue  # dropped from running; running[i] is already the next one
            scheduled_running[request.request_id] = (new_ids, request.num_computed_tokens)
            num_scheduled[request.request_id] = num_new
            if drafts:
                spec_tokens[request.request_id] = drafts
            request.num_computed_tokens += num_new
            if request.num_computed_tokens >= request.num_tokens + placeholders:
                # This step samples a token (and, optimistically, every draft).
                if self.async_scheduling:
                    request.num_output_placeholders += 1 + len(drafts)
                if request.grammar is not None:
                    grammar_req_ids.append(request.request_id)
            budget -= num_new
            i += 1

        if not preempted:
            budget = self._admit_waiting(budget, num_scheduled, new_reqs, ctx, grammar_req_ids)

        values = scheduled_running.values()
        cached = CachedRequestData(
            req_ids=list(scheduled_running),
            new_block_ids=[v[0] for v in values],
            num_computed_tokens=[v[1] for v in values],
        )
        finished, self.finished_req_ids = self.finished_req_ids, set()
        restores, saves = kv.take_state_copies()
        return SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=self.max_num_batched_tokens - budget,
            finished_req_ids=finished,
            preempted_req_ids=preempted,
            grammar_req_ids=grammar_req_ids,
            state_restores=restores,
            state_saves=saves,
            scheduled_spec_decode_tokens=spec_tokens,
        )

    def _draft_placeholders(self, request: Request, num_new: int, budget: int) -> list[int]:
        """The draft placeholders of a decoding request (asynchronous scheduling): as many
        as fit the budget, max_tokens and max_model_len counting every token in flight."""
        if (num_new != 1 or len(self.running) >= self.speculate_below
                or request.grammar is not None
                or features_of(request.sampling_params) & OUTPUT_READING_FEATURES):
            return []
        known = request.num_tokens + request.num_output_placeholders
        room = min(budget - 1, self.num_speculative_tokens, self.max_model_len - known,
                   request.max_tokens - request.num_output_tokens
                   - request.num_output_placeholders - 1)
        return [DRAFT_PLACEHOLDER] * max(0, room)

    def _lookahead(self, end: int) -> int:
        """Slots to allocate past ``end`` for a draft model's own steps (none past
        max_model_len)."""
        return max(0, min(self.num_lookahead_tokens, self.max_model_len - end))

    def _admit_waiting(
        self, budget: int, num_scheduled: dict[str, int], new_reqs: list[NewRequestData],
        ctx: SchedulingContext, grammar_req_ids: list[str],
    ) -> int:
        """Move waiting requests to running while tokens, sequences and blocks last."""
        kv = self.kv_cache_manager
        policy = self.policy
        running = self.running
        max_chunk = self.max_num_batched_tokens if self.enable_chunked_prefill else None
        while budget > 0 and len(running) < self.max_num_seqs and len(policy):
            request = policy.peek(ctx)
            if not kv.can_ever_fit(request.num_tokens, max_chunk):
                policy.pop(ctx)
                self._abort_unfittable(request)
                continue
            hit_ids, num_hit = kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit
            if num_new > budget:
                if not self.enable_chunked_prefill:
                    break
                num_new = budget
            num_new = kv.snapshot_chunk(num_hit, num_new)
            new_ids = kv.allocate_slots(request, num_new, hit_ids, num_hit,
                                        num_lookahead_tokens=self._lookahead(num_hit + num_new))
            if new_ids is None:
                break
            policy.pop(ctx)
            running.append(request)
            request.status = _RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = ctx.now
                request.num_cached_tokens = num_hit
            rid = request.request_id
            new_reqs.append(NewRequestData(
                req_id=rid,
                token_ids=list(request.all_token_ids),
                num_prompt_tokens=request.num_prompt_tokens,
                sampling_params=request.sampling_params,
                block_ids=kv.get_block_ids(rid),
                num_computed_tokens=num_hit,
                stop_token_ids=request.stop_token_ids,
                state_slot=kv.get_state_slot(rid),
            ))
            num_scheduled[rid] = num_new
            request.num_computed_tokens = num_hit + num_new
            if request.num_computed_tokens == request.num_tokens:
                # This step samples a token.
                if self.async_scheduling:
                    request.num_output_placeholders += 1
                if request.grammar is not None:
                    grammar_req_ids.append(rid)
            budget -= num_new
        return budget

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Append sampled tokens, apply stop conditions, free finished requests.

        Call it after every ``schedule()``, even an empty one: it also delivers the outputs of
        requests the scheduler finished on its own.
        """
        outputs = self._pending_outputs
        self._pending_outputs = []
        requests = self.requests
        logprobs = runner_output.logprobs
        prompt_logprobs = runner_output.prompt_logprobs
        scheduled_drafts = scheduler_output.scheduled_spec_decode_tokens
        next_drafts = runner_output.spec_token_ids
        num_finished = 0
        now = self.clock()
        for idx, (req_id, new_ids) in enumerate(
                zip(runner_output.req_ids, runner_output.sampled_token_ids)):
            request = requests.get(req_id)
            if request is None or request.status is not _RUNNING:
                continue  # finished (aborted) after it was scheduled
            plp = prompt_logprobs.get(req_id) if prompt_logprobs else None
            if plp is not None:
                plp = self._unsent_prompt_logprobs(request, plp, scheduler_output)
            if not new_ids:
                if plp is not None:
                    outputs.append(EngineCoreOutput(
                        req_id, [], None, plp, None, None, request.num_cached_tokens))
                continue
            lp = logprobs[idx] if logprobs else None
            if request.first_token_time is None:
                request.first_token_time = now
            drafts = scheduled_drafts.get(req_id) if scheduled_drafts else None
            if request.num_output_placeholders:
                request.num_output_placeholders -= 1 + len(drafts or ())
            if drafts:
                # The rejected drafts' K/V is stale: roll the computed tokens back to the
                # accepted ones (the next step overwrites the rest).
                num_accepted = len(new_ids) - 1
                request.num_computed_tokens -= len(drafts) - num_accepted
                scored = (runner_output.num_draft_tokens[idx] if runner_output.num_draft_tokens
                          else len(drafts))
                if scored:
                    self.spec_stats.observe(scored, num_accepted)
            num_kept = self._append_and_check_stop(request, new_ids)
            if num_kept < len(new_ids):
                new_ids = new_ids[:num_kept]
                if lp is not None:
                    lp = LogprobsLists(lp.token_ids[:num_kept], lp.logprobs[:num_kept],
                                       lp.ranks[:num_kept])
            status = request.status
            if status is _RUNNING:
                if next_drafts:
                    request.spec_token_ids = next_drafts[idx]
                outputs.append(EngineCoreOutput(
                    req_id, new_ids, lp, plp, None, None, request.num_cached_tokens))
                continue
            num_finished += 1
            self._release(request)
            outputs.append(EngineCoreOutput(
                req_id, new_ids, lp, plp, status.finish_reason, request.stop_reason,
                request.num_cached_tokens))
        if num_finished:
            self.running = [r for r in self.running if r.status is _RUNNING]
        if self._policy_feedback:
            self._give_feedback(scheduler_output.num_scheduled_tokens,
                                scheduler_output.preempted_req_ids, now)
        return outputs

    def _give_feedback(self, num_scheduled: dict[str, int], preempted: set[str],
                       now: float) -> None:
        done = self._finished_for_policy
        if num_scheduled or preempted or done:
            self._finished_for_policy = []
            self.policy.on_step(StepFeedback(num_scheduled, preempted, done, now))

    def _append_and_check_stop(self, request: Request, new_ids: list[int]) -> int:
        """Append tokens one by one until a stop condition; returns how many were kept.

        A constrained request's grammar accepts each token; the grammar completing (its end
        token accepted) stops the request. ``new_ids`` is rewritten in place where the
        grammar's end replaces a token sampled with every token masked.
        """
        tokens = request.all_token_ids
        stop_ids = request.stop_token_ids
        min_tokens = request.sampling_params.min_tokens
        num_prompt = request.num_prompt_tokens
        max_tokens = request.max_tokens
        max_model_len = self.max_model_len
        grammar = request.grammar
        for k, tok in enumerate(new_ids, 1):
            tokens.append(tok)
            if grammar is not None:
                matcher = grammar.matcher
                if not matcher.accept_token(tok):
                    if len(tokens) - 1 - num_prompt < min_tokens:
                        end = next((e for e in request.eos_token_ids
                                    if matcher.accept_token(e)), None)
                        if end is not None:
                            # min_tokens forbade the end token that alone completes the
                            # grammar, so no token was allowed: the grammar's end wins.
                            tokens[-1] = new_ids[k - 1] = end
                            request.status = _STOPPED
                            request.stop_reason = None
                            return k
                    # The mask allowed only what the grammar accepts: this is a bug, and the
                    # output so far cannot be trusted.
                    logger.error("request %s: grammar rejected sampled token %d; aborting it",
                                 request.request_id, tok)
                    request.status = _ABORTED
                    return k
                if matcher.is_terminated():
                    request.status = _STOPPED
                    request.stop_reason = None
                    return k
            num_output = len(tokens) - num_prompt
            if tok in stop_ids and num_output >= min_tokens:
                request.status = _STOPPED
                is_eos = tok in request.eos_token_ids and not request.sampling_params.ignore_eos
                request.stop_reason = None if is_eos else tok
                return k
            if num_output >= max_tokens or len(tokens) >= max_model_len:
                request.status = _LENGTH
                return k
        return len(new_ids)

    @staticmethod
    def _unsent_prompt_logprobs(
        request: Request, plp: LogprobsLists, scheduler_output: SchedulerOutput
    ) -> LogprobsLists | None:
        """Drop prompt-logprob rows already sent before a preemption made them recompute.

        Assumes row j of a step's rows belongs to prompt position ``chunk_start + j``.
        """
        chunk_start = (request.num_computed_tokens
                       - scheduler_output.num_scheduled_tokens.get(request.request_id, 0))
        num_rows = len(plp.token_ids)
        sent = request.extra.get(_PLP_SENT, 0)
        request.extra[_PLP_SENT] = max(sent, chunk_start + num_rows)
        skip = sent - chunk_start
        if skip <= 0:
            return plp
        if skip >= num_rows:
            return None
        return LogprobsLists(plp.token_ids[skip:], plp.logprobs[skip:], plp.ranks[skip:])

    # -- finishing and preemption -------------------------------------------------------

    def finish_requests(
        self, request_ids: str | Iterable[str], finished_status: RequestStatus
    ) -> None:
        """Finish requests from outside the step (abort, stop string); unknown ids ignored.

        Frees their blocks and tells the runner with the next ``SchedulerOutput``. No output
        is emitted: the caller already knows.
        """
        if not finished_status.is_finished:
            raise ValueError(f"finish_requests needs a finished status, got {finished_status!r}")
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        was_running = was_awaiting = False
        waiting = []
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is None:
                continue
            if request.status is _RUNNING:
                was_running = True
            elif request.status is _AWAITING_GRAMMAR:
                was_awaiting = True
            else:
                waiting.append(request)
            request.status = finished_status
            self._release(request)
        if was_running:
            self.running = [r for r in self.running if r.status is _RUNNING]
        if was_awaiting:
            self.awaiting_grammar = [r for r in self.awaiting_grammar
                                     if r.status is _AWAITING_GRAMMAR]
        if waiting:
            self.policy.remove(waiting)
        if self._policy_feedback:
            self._give_feedback({}, set(), self.clock())

    def _queue_compiled(self, block: bool) -> None:
        """Move constrained requests whose grammar compiled into the policy's queue, and drop
        those whose grammar failed (the caller learns why from ``request.grammar_future``).
        ``block``: nothing else can run, so wait a moment for a compilation to finish rather
        than spin."""
        if block:
            wait([r.grammar_future for r in self.awaiting_grammar], timeout=_GRAMMAR_POLL_S,
                 return_when=FIRST_COMPLETED)
        still = []
        for request in self.awaiting_grammar:
            future = request.grammar_future
            if not future.done():
                still.append(request)
            elif future.exception() is not None:
                request.status = _ABORTED
                del self.requests[request.request_id]  # nothing was allocated
            else:
                request.grammar = future.result().start()
                request.status = RequestStatus.WAITING
                self.policy.add(request)
        self.awaiting_grammar = still

    def _release(self, request: Request) -> None:
        """Free a finished request's blocks and forget it (the caller fixes the queues)."""
        self.kv_cache_manager.free(request)
        del self.requests[request.request_id]
        self.finished_req_ids.add(request.request_id)
        if self._policy_feedback:
            self._finished_for_policy.append(request)

    def _preempt(self, request: Request, preempted: set[str]) -> None:
        """Free a running request's blocks and put it back in the waiting queue to recompute."""
        self.kv_cache_manager.free(request)  # reads num_computed_tokens: reset after
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        # A token still in flight is dropped on arrival (the request is no longer running)
        # and sampled again after the recompute.
        request.num_output_placeholders = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.policy.prepend(request)
        preempted.add(request.request_id)

    def _abort_unfittable(self, request: Request) -> None:
        """Finish a request that needs more KV blocks than the whole cache has."""
        request.status = _ABORTED
        self._release(request)
        self._pending_outputs.append(EngineCoreOutput(
            request.request_id, [], finish_reason=_ABORTED.finish_reason,
            num_cached_tokens=request.num_cached_tokens))
