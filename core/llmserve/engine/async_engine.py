"""``AsyncEngine``: the serving front end, with the engine core in its own process.

The front end tokenizes, validates, fans out ``n``, detokenizes and matches stop strings
(``OutputProcessor``); the core (``python -m llmserve.engine.core_process``, a fresh
interpreter) resolves the engine arguments against the plugins and the model, schedules and
runs the model. Two pipes join them (``CoreClient``); the message protocol is documented in
``llmserve.engine.core_process``. A writer thread sends, a reader thread receives and hands
each message to the event loop, which routes outputs to one ``asyncio.Queue`` per request.

With ``data_parallel_size`` N > 1 the front end starts N identical cores and
``ReplicaBalancer`` (``llmserve.engine.data_parallel``) sends each request to one of them;
everything else (tokenizing, streams, metrics) stays one front end. With N = 1 there is no
balancer: every request goes to the one core.

The front end imports no model, layer, runner, platform, attention, KV-cache or sampler code
and no plugin package: the resolved configuration, the model facts it tokenizes and
validates with, and the KV capacity all come in the core's ready message. (Loading a
transformers tokenizer imports torch all the same.)

Usage from Python::

    engine = await AsyncEngine.from_engine_args(EngineArgs(model=path))
    async for out in engine.generate("Hello", SamplingParams(max_tokens=16), "req-1"):
        print(out.outputs[0].text, end="")      # deltas: only the new text of each step
    await engine.shutdown()

Leaving the ``async for`` early (``break``, a cancelled task, a client that disconnected)
aborts the request in the core, which frees its KV blocks. If a core process dies (any
replica), every pending request raises ``EngineDeadError``, ``is_running`` turns False and the
callbacks given to ``on_dead`` run (the HTTP server uses one to exit non-zero).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Protocol, Union

from llmserve.config import EngineArgs, EngineConfig
from llmserve.engine.core_client import CoreClient
from llmserve.engine.core_process import EngineInfo
from llmserve.engine.data_parallel import ReplicaBalancer, merge_replica_stats
from llmserve.engine.input_processor import InputProcessor, fan_out_params
from llmserve.engine.output_processor import OutputProcessor, RequestOutputKind
from llmserve.outputs import RequestOutput
from llmserve.request import NO_HINTS, EngineCoreRequest, RequestStatus, SchedulingHints
from llmserve.sampling_params import SamplingParams

__all__ = ["AsyncEngine", "EngineDeadError", "IterationStats", "QueueFullError",
           "RequestOutputKind", "RequestStream", "StatLogger"]

logger = logging.getLogger(__name__)

PromptInput = Union[str, list[int]]


class EngineDeadError(RuntimeError):
    """The engine-core process is gone; no request can run any more."""


class QueueFullError(RuntimeError):
    """The core's waiting queue is full (``max_waiting_requests``): the scheduler's refusal,
    as the core reports it across the process boundary."""


@dataclass
class IterationStats:
    """What one message from the core meant for the metrics (all times in seconds)."""

    now: float
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    queue_times: list[float] = field(default_factory=list)
    e2e_latencies: list[float] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0


class StatLogger(Protocol):
    """Receives the engine's numbers; the HTTP server's Prometheus metrics implement it."""

    def record(self, iteration: Optional[IterationStats], engine_stats: dict,
               engine: int = 0) -> None:
        """Called on the event loop after every message from a core. ``engine_stats`` is
        ``EngineCore.stats()`` plus ``num_free_blocks`` (cumulative counters stay
        cumulative) of core ``engine`` (its data-parallel rank); ``iteration`` is None for a
        stats-only message."""


class RequestStream:
    """The outputs of one request, as an async iterator; ends after the finished output."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finished = False
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, item: Union[RequestOutput, BaseException]) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item


@dataclass
class _Tracked:
    """Front-end timing of one user request (for metrics)."""

    arrival_time: float
    num_prompt_tokens: int
    core_ids: list[str]
    #: The engine core (data-parallel rank) that serves it.
    engine: int = 0
    first_token_time: Optional[float] = None


class AsyncEngine:
    """The engine for ``asyncio`` callers: one request per ``generate`` call, many at once."""

    def __init__(self, args: EngineArgs, *, stat_logger: Optional[StatLogger] = None,
                 log_level: int = logging.WARNING) -> None:
        """Keep ``args`` (pydantic has checked each value); ``start()`` starts the core
        processes, which resolve them against the plugins and the model directory."""
        self.engine_args = EngineArgs.model_validate(args)
        self.stat_logger = stat_logger
        #: What the started core (data-parallel replica 0) reported; None before ``start()``.
        self.info: Optional[EngineInfo] = None
        #: What each started core reported, by data-parallel rank.
        self.replica_infos: list[EngineInfo] = []
        self._frontend: Optional[InputProcessor] = None
        self._output_processor: Optional[OutputProcessor] = None
        self._log_level = log_level
        self._streams: dict[str, RequestStream] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._core_to_parent: dict[str, str] = {}
        self._last_token_time: dict[str, float] = {}
        self._pending_acks: dict[str, asyncio.Future] = {}
        self._dead_reason: Optional[str] = None
        self._dead_callbacks: list[Callable[[str], None]] = []
        self._closing = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._cores: list[CoreClient] = []
        self._core_stats: list[dict] = []
        #: None with one core: then every request goes to core 0.
        self._balancer: Optional[ReplicaBalancer] = None

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    async def from_engine_args(cls, args: EngineArgs, **kwargs: Any) -> "AsyncEngine":
        engine = cls(args, **kwargs)
        await engine.start()
        return engine

    async def __aenter__(self) -> "AsyncEngine":
        if not self._cores:
            await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def start(self, timeout_s: float = 900.0) -> EngineInfo:
        """Start the core processes (``data_parallel_size`` of them, at once), wait until
        their models and KV caches are ready, then load the tokenizer the cores name.

        Raises ``ValueError`` when a core rejected the arguments for this model or machine
        (an unsupported architecture, a ``max_model_len`` beyond the model's, a device that is
        not there, a KV cache too small for one sequence), ``RuntimeError`` when it failed or
        exited otherwise; the other cores are then stopped too.
        """
        if self._cores:
            raise RuntimeError("the engine is already started")
        self._loop = loop = asyncio.get_running_loop()
        size = self.engine_args.data_parallel_size
        self._cores = [CoreClient(i, self._on_message, self._on_core_dead)
                       for i in range(size)]
        try:
            for core in self._cores:
                args = self.engine_args if size == 1 else self.engine_args.model_copy(
                    update={"data_parallel_rank": core.index})
                core.spawn(args.model_dump(), self._log_level)
            infos = await self._wait_ready(timeout_s)
            frontend = await loop.run_in_executor(None, InputProcessor.load, infos[0].model)
        except BaseException:
            for core in self._cores:
                core.kill()
            raise
        self.info, self.replica_infos = infos[0], infos
        self._frontend = frontend
        self._output_processor = OutputProcessor(frontend.tokenizer)
        self._core_stats = [{} for _ in self._cores]
        if size > 1:
            cache = infos[0].config.cache
            self._balancer = ReplicaBalancer(size, cache.block_size,
                                             prefix_affinity=cache.enable_prefix_caching)
        for core in self._cores:
            core.start_threads(loop)
        return self.info

    async def _wait_ready(self, timeout_s: float) -> list[EngineInfo]:
        """Every core's info; the first failure (not the last) is raised at once."""
        loop = asyncio.get_running_loop()
        waits = [loop.run_in_executor(None, core.wait_ready, timeout_s) for core in self._cores]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
        failed = [w for w in waits if w.done() and w.exception() is not None]
        if not failed:
            return [w.result() for w in waits]
        for core in self._cores:
            core.kill()
        await asyncio.gather(*pending, return_exceptions=True)
        error = failed[0].exception()
        if len(self._cores) > 1 and not isinstance(error, ValueError):
            index = waits.index(failed[0])
            raise RuntimeError(f"data-parallel replica {index}: {error}") from error
        raise error

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the core processes (in-flight requests are not waited for: drain first)."""
        if not self._cores or self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._stop_cores, timeout_s)
        self._fail_all(EngineDeadError("the engine was shut down"))

    def _stop_cores(self, timeout_s: float) -> None:
        for core in self._cores:
            core.request_shutdown()
        for core in self._cores:
            core.close(timeout_s)

    def on_dead(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on the event loop if a core process dies."""
        self._dead_callbacks.append(callback)

    @property
    def is_running(self) -> bool:
        return (bool(self._cores) and self._dead_reason is None and not self._closing
                and all(core.is_alive for core in self._cores))

    @property
    def dead_reason(self) -> Optional[str]:
        return self._dead_reason

    @property
    def engine_stats(self) -> dict:
        """The core's latest ``stats()`` (num_running, num_waiting, kv_cache_usage, ...);
        with several replicas, their counts added up and their KV usage averaged."""
        if len(self._core_stats) == 1:
            return dict(self._core_stats[0])
        return merge_replica_stats(self._core_stats)

    @property
    def replica_stats(self) -> list[dict]:
        """Each core's latest ``stats()``, by data-parallel rank."""
        return [dict(stats) for stats in self._core_stats]

    @property
    def _proc(self):
        """Core 0's process (``subprocess.Popen``), or None before ``start()``."""
        return self._cores[0].proc if self._cores else None

    @property
    def config(self) -> EngineConfig:
        """The configuration the core resolved (frozen; available once started)."""
        return self._started_info().config

    @property
    def frontend(self) -> InputProcessor:
        """Tokenizer, EOS ids, sampling defaults and request checks (once started)."""
        self._started_info()
        return self._frontend

    @property
    def tokenizer(self) -> Any:
        return self.frontend.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.frontend.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.frontend.vocab_size

    def _started_info(self) -> EngineInfo:
        if self.info is None:
            raise RuntimeError("the engine is not started: its configuration and tokenizer "
                               "come from the engine core (await start() first)")
        return self.info

    # -- requests -------------------------------------------------------------------------

    async def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams,
                          *, priority: int = 0, arrival_time: Optional[float] = None,
                          output_kind: RequestOutputKind = RequestOutputKind.DELTA,
                          hints: SchedulingHints = NO_HINTS,
                          ) -> RequestStream:
        """Validate and submit a request; returns its stream once the core accepted it.

        Raises ``ValueError`` (bad prompt or token ids, id in use), ``QueueFullError`` (the
        core's waiting queue is full) or ``EngineDeadError``.
        """
        self._check_alive()
        arrival = time.monotonic() if arrival_time is None else arrival_time
        text, token_ids = self.frontend.tokenize_prompt(prompt)
        self.frontend.validate_request(token_ids, params)
        children = fan_out_params(params)
        core_ids = self._output_processor.add_request(request_id, text, token_ids, children,
                                                      output_kind)
        index = (0 if self._balancer is None
                 else self._balancer.route(token_ids, len(core_ids)))
        core = self._cores[index]
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        self._tracked[request_id] = _Tracked(arrival, len(token_ids), core_ids, index)
        for cid in core_ids:
            self._core_to_parent[cid] = request_id
        eos = self.frontend.eos_token_ids
        requests = [EngineCoreRequest(cid, token_ids, child, eos, arrival, priority,
                                      hints=hints)
                    for cid, child in zip(core_ids, children)]
        ack = self._loop.create_future()
        self._pending_acks[core_ids[0]] = ack
        core.send(("add", requests))
        try:
            await ack
        except BaseException:
            self._forget(request_id, core_ids)
            if not ack.done() or ack.cancelled():  # we were cancelled: the core may hold it
                self._pending_acks.pop(core_ids[0], None)
                core.send(("abort", core_ids, int(RequestStatus.FINISHED_ABORTED)))
            raise
        return stream

    async def generate(self, prompt: PromptInput, params: SamplingParams,
                       request_id: Optional[str] = None, *, priority: int = 0,
                       arrival_time: Optional[float] = None,
                       output_kind: RequestOutputKind = RequestOutputKind.DELTA,
                       hints: SchedulingHints = NO_HINTS,
                       ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs: deltas per step (``DELTA``, the default) or one final
        output (``FINAL_ONLY``). Leaving early aborts the request."""
        rid = request_id if request_id is not None else uuid.uuid4().hex
        stream = await self.add_request(rid, prompt, params, priority=priority,
                                        arrival_time=arrival_time, output_kind=output_kind,
                                        hints=hints)
        try:
            async for out in stream:
                yield out
        finally:
            if not stream.finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Abort a request: its core finishes it and frees its KV blocks. Unknown ids are
        ignored."""
        if self._output_processor is None:
            return
        core_ids = self._output_processor.core_ids(request_id)
        if not core_ids:
            return
        index = self._forget(request_id, core_ids)
        if self._dead_reason is None and not self._closing:
            self._cores[index].send(("abort", core_ids, int(RequestStatus.FINISHED_ABORTED)))

    def _forget(self, request_id: str, core_ids: list[str]) -> int:
        """Drop the front end's state of a request; returns the core that served it."""
        self._output_processor.abort(request_id)
        self._streams.pop(request_id, None)
        for cid in core_ids:
            self._core_to_parent.pop(cid, None)
            self._last_token_time.pop(cid, None)
        t = self._untrack(request_id)
        return t.engine if t is not None else 0

    def _untrack(self, request_id: str) -> Optional[_Tracked]:
        """Stop tracking a request; its completions no longer count as its core's load."""
        t = self._tracked.pop(request_id, None)
        if t is not None and self._balancer is not None:
            self._balancer.release(t.engine, len(t.core_ids))
        return t

    def _check_alive(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"the engine core is dead: {self._dead_reason}")
        if not self._cores or self._closing:
            raise EngineDeadError("the engine is not running (not started, or shut down)")

    # -- on the event loop ----------------------------------------------------------------

    def _on_message(self, index: int, message, now: float) -> None:
        """A message of core ``index`` (called by its reader thread through the loop)."""
        kind = message[0]
        if kind == "outputs":
            try:
                self._on_outputs(index, message[1], message[2], message[3], now)
            except Exception as exc:  # noqa: BLE001 - a front-end bug must not hang requests
                logger.exception("processing engine outputs failed; aborting the requests")
                self._fail_requests(list(self._streams), RuntimeError(
                    f"processing the engine's outputs failed: {type(exc).__name__}: {exc}"))
        elif kind == "acks":
            for first_id, error in message[1]:
                ack = self._pending_acks.pop(first_id, None)
                if ack is None or ack.done():
                    continue
                if error is None:
                    ack.set_result(None)
                elif error[0] == "queue_full":
                    ack.set_exception(QueueFullError(error[1]))
                else:
                    ack.set_exception(ValueError(error[1]))
        elif kind == "stats":
            self._set_stats(index, message[1])
            if self.stat_logger is not None:
                self.stat_logger.record(None, message[1], index)
        elif kind == "dead":
            logger.error("engine core failed: %s", message[1])
            self._on_core_dead(index, message[1].splitlines()[0])

    def _set_stats(self, index: int, stats: dict) -> None:
        self._core_stats[index] = stats
        if self._balancer is not None:
            self._balancer.report(index, stats.get("num_running", 0)
                                  + stats.get("num_waiting", 0))

    def _on_outputs(self, index: int, outputs, engine_stats: dict, queue_times: dict,
                    now: float) -> None:
        self._set_stats(index, engine_stats)
        it = IterationStats(now) if self.stat_logger is not None else None
        parents = self._core_to_parent
        if it is not None:
            it.queue_times = list(queue_times.values())
            tracked, last = self._tracked, self._last_token_time
            for out in outputs:
                num_new = len(out.new_token_ids)
                if not num_new:
                    continue
                cid = out.request_id
                it.num_generation_tokens += num_new
                prev = last.get(cid)
                if prev is None:
                    t = tracked.get(parents.get(cid, ""))
                    if t is not None and t.first_token_time is None:
                        t.first_token_time = now
                        it.time_to_first_tokens.append(now - t.arrival_time)
                        it.num_prompt_tokens += t.num_prompt_tokens
                else:
                    it.inter_token_latencies.append(now - prev)
                last[cid] = now
        ready, stopped = self._output_processor.process(outputs)
        if stopped:
            self._cores[index].send(("abort", stopped, int(RequestStatus.FINISHED_STOPPED)))
        for out in ready:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
            if out.finished:
                self._finish(out, it, now)
        if it is not None:
            self.stat_logger.record(it, engine_stats, index)

    def _finish(self, out: RequestOutput, it: Optional[IterationStats], now: float) -> None:
        rid = out.request_id
        self._streams.pop(rid, None)
        t = self._untrack(rid)
        if t is None:
            return
        for cid in t.core_ids:
            self._core_to_parent.pop(cid, None)
            self._last_token_time.pop(cid, None)
        if it is not None:
            it.e2e_latencies.append(now - t.arrival_time)
            it.finish_reasons.extend(c.finish_reason or "abort" for c in out.outputs)

    def _on_core_dead(self, index: int, reason: str) -> None:
        self._on_dead(reason if len(self._cores) == 1
                      else f"data-parallel replica {index}: {reason}")

    def _on_dead(self, reason: str) -> None:
        if self._dead_reason is not None or self._closing:
            return
        self._dead_reason = reason
        logger.error("the engine core died: %s", reason)
        self._fail_all(EngineDeadError(f"the engine core died: {reason}"))
        for callback in self._dead_callbacks:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 - one bad callback must not hide the others
                logger.exception("engine-death callback failed")

    def _fail_requests(self, request_ids: list[str], error: Exception) -> None:
        """End these requests with ``error`` and abort them in their cores."""
        for rid in request_ids:
            stream = self._streams.get(rid)
            self.abort(rid)
            if stream is not None:
                stream.put(error)

    def _fail_all(self, error: Exception) -> None:
        for ack in self._pending_acks.values():
            if not ack.done():
                ack.set_exception(error)
        self._pending_acks.clear()
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()
