"""``AsyncEngine``: the serving front end, with the engine core in its own process.

The front end tokenizes, validates, fans out ``n``, detokenizes and matches stop strings
(``OutputProcessor``); the core (``python -m llmserve.engine.core_process``, a fresh
interpreter) resolves the engine arguments against the plugins and the model, schedules and
runs the model. Two pipes join them; the message protocol is documented in
``llmserve.engine.core_process``. A writer thread sends, a reader thread receives and hands
each message to the event loop, which routes outputs to one ``asyncio.Queue`` per request.

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
aborts the request in the core, which frees its KV blocks. If the core process dies, every
pending request raises ``EngineDeadError``, ``is_running`` turns False and the callbacks given
to ``on_dead`` run (the HTTP server uses one to exit non-zero).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import queue
import subprocess
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Protocol, Union

from llmserve.config import EngineArgs, EngineConfig
from llmserve.engine.core_process import EngineInfo
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

    def record(self, iteration: Optional[IterationStats], engine_stats: dict) -> None:
        """Called on the event loop after every message from the core. ``engine_stats`` is
        ``EngineCore.stats()`` plus ``num_free_blocks`` (cumulative counters stay
        cumulative); ``iteration`` is None for a stats-only message."""


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
    first_token_time: Optional[float] = None


class AsyncEngine:
    """The engine for ``asyncio`` callers: one request per ``generate`` call, many at once."""

    def __init__(self, args: EngineArgs, *, stat_logger: Optional[StatLogger] = None,
                 log_level: int = logging.WARNING) -> None:
        """Keep ``args`` (pydantic has checked each value); ``start()`` starts the core
        process, which resolves them against the plugins and the model directory."""
        self.engine_args = EngineArgs.model_validate(args)
        self.stat_logger = stat_logger
        #: What the started core reported; None before ``start()``.
        self.info: Optional[EngineInfo] = None
        self._frontend: Optional[InputProcessor] = None
        self._output_processor: Optional[OutputProcessor] = None
        self._log_level = log_level
        self._streams: dict[str, RequestStream] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._core_to_parent: dict[str, str] = {}
        self._last_token_time: dict[str, float] = {}
        self._pending_acks: dict[str, asyncio.Future] = {}
        self._engine_stats: dict = {}
        self._dead_reason: Optional[str] = None
        self._dead_callbacks: list[Callable[[str], None]] = []
        self._closing = False
        self._proc = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._send_queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._input_conn = None
        self._output_conn = None

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    async def from_engine_args(cls, args: EngineArgs, **kwargs: Any) -> "AsyncEngine":
        engine = cls(args, **kwargs)
        await engine.start()
        return engine

    async def __aenter__(self) -> "AsyncEngine":
        if self._proc is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def start(self, timeout_s: float = 900.0) -> EngineInfo:
        """Start the core process, wait until its model and KV cache are ready, then load the
        tokenizer the core names.

        Raises ``ValueError`` when the core rejected the arguments for this model or machine
        (an unsupported architecture, a ``max_model_len`` beyond the model's, a device that is
        not there, a KV cache too small for one sequence), ``RuntimeError`` when it failed or
        exited otherwise.
        """
        if self._proc is not None:
            raise RuntimeError("the engine is already started")
        self._loop = asyncio.get_running_loop()
        core_input_r, core_input_w = multiprocessing.Pipe(duplex=False)
        core_output_r, core_output_w = multiprocessing.Pipe(duplex=False)
        child_fds = (core_input_r.fileno(), core_output_w.fileno())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.engine.core_process", *map(str, child_fds)],
            pass_fds=child_fds, close_fds=True)
        # Close our copies of the child's ends, so either side sees EOF when the other dies.
        core_input_r.close()
        core_output_w.close()
        self._input_conn, self._output_conn = core_input_w, core_output_r
        _track_live_engine(self)
        try:
            core_input_w.send(("init", self.engine_args.model_dump(), self._log_level))
            message = await self._loop.run_in_executor(None, self._wait_ready, timeout_s)
            info = EngineInfo.from_message(message[1])
            frontend = await self._loop.run_in_executor(None, InputProcessor.load, info.model)
        except BaseException:
            self._kill()
            raise
        self.info = info
        self._frontend = frontend
        self._output_processor = OutputProcessor(frontend.tokenizer)
        threading.Thread(target=self._writer, name="llmserve-engine-writer",
                         daemon=True).start()
        threading.Thread(target=self._reader, name="llmserve-engine-reader",
                         daemon=True).start()
        return self.info

    def _wait_ready(self, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        conn, proc = self._output_conn, self._proc
        while time.monotonic() < deadline:
            try:
                if conn.poll(0.2):
                    message = conn.recv()
                    if message[0] == "ready":
                        return message
                    _, kind, text = message
                    if kind == "invalid":
                        raise ValueError(text)
                    raise RuntimeError(f"the engine core failed to start: {text}")
            except (EOFError, OSError):
                raise RuntimeError(f"the engine core exited during start-up "
                                   f"(exit code {_wait(proc, 5)})") from None
            if proc.poll() is not None:
                raise RuntimeError(f"the engine core exited during start-up "
                                   f"(exit code {proc.returncode})")
        raise RuntimeError(f"the engine core did not start within {timeout_s:.0f} s")

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the core process (in-flight requests are not waited for: drain first)."""
        if self._proc is None or self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._stop_process, timeout_s)
        self._fail_all(EngineDeadError("the engine was shut down"))

    def _stop_process(self, timeout_s: float) -> None:
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._send_queue.put(("shutdown",))
            self._send_queue.put(None)
            _wait(proc, timeout_s)
        self._kill()

    def _kill(self) -> None:
        """Last resort, and the cleanup after a normal stop."""
        self._closing = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            if _wait(proc, 5) is None:
                proc.kill()
                _wait(proc, 5)
        for conn in (self._input_conn, self._output_conn):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        _live_engines.discard(self)

    def on_dead(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on the event loop if the core process dies."""
        self._dead_callbacks.append(callback)

    @property
    def is_running(self) -> bool:
        return (self._proc is not None and self._dead_reason is None and not self._closing
                and self._proc.poll() is None)

    @property
    def dead_reason(self) -> Optional[str]:
        return self._dead_reason

    @property
    def engine_stats(self) -> dict:
        """The core's latest ``stats()`` (num_running, num_waiting, kv_cache_usage, ...)."""
        return dict(self._engine_stats)

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
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        self._tracked[request_id] = _Tracked(arrival, len(token_ids), core_ids)
        for cid in core_ids:
            self._core_to_parent[cid] = request_id
        eos = self.frontend.eos_token_ids
        requests = [EngineCoreRequest(cid, token_ids, child, eos, arrival, priority,
                                      hints=hints)
                    for cid, child in zip(core_ids, children)]
        ack = self._loop.create_future()
        self._pending_acks[core_ids[0]] = ack
        self._send(("add", requests))
        try:
            await ack
        except BaseException:
            self._forget(request_id, core_ids)
            if not ack.done() or ack.cancelled():  # we were cancelled: the core may hold it
                self._pending_acks.pop(core_ids[0], None)
                self._send(("abort", core_ids, int(RequestStatus.FINISHED_ABORTED)))
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
        """Abort a request: the core finishes it and frees its KV blocks. Unknown ids are
        ignored."""
        if self._output_processor is None:
            return
        core_ids = self._output_processor.core_ids(request_id)
        if not core_ids:
            return
        self._forget(request_id, core_ids)
        if self._dead_reason is None and not self._closing:
            self._send(("abort", core_ids, int(RequestStatus.FINISHED_ABORTED)))

    def _forget(self, request_id: str, core_ids: list[str]) -> None:
        self._output_processor.abort(request_id)
        self._streams.pop(request_id, None)
        self._tracked.pop(request_id, None)
        for cid in core_ids:
            self._core_to_parent.pop(cid, None)
            self._last_token_time.pop(cid, None)

    def _check_alive(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"the engine core is dead: {self._dead_reason}")
        if self._proc is None or self._closing:
            raise EngineDeadError("the engine is not running (not started, or shut down)")

    def _send(self, message) -> None:
        self._send_queue.put(message)

    # -- the threads ----------------------------------------------------------------------

    def _writer(self) -> None:
        conn = self._input_conn
        while True:
            message = self._send_queue.get()
            if message is None:
                return
            try:
                conn.send(message)
            except (OSError, ValueError):
                return  # the reader sees the EOF and reports the death

    def _reader(self) -> None:
        conn, loop = self._output_conn, self._loop
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError, ValueError):
                if not self._closing:
                    code = _wait(self._proc, 2)
                    reason = f"engine core process exited (exit code {code})"
                    self._call_soon(loop, self._on_dead, reason)
                return
            if not self._call_soon(loop, self._on_message, message, time.monotonic()):
                return

    @staticmethod
    def _call_soon(loop, fn, *args) -> bool:
        try:
            loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop is closed
            return False

    # -- on the event loop ----------------------------------------------------------------

    def _on_message(self, message, now: float) -> None:
        kind = message[0]
        if kind == "outputs":
            try:
                self._on_outputs(message[1], message[2], message[3], now)
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
            self._engine_stats = message[1]
            if self.stat_logger is not None:
                self.stat_logger.record(None, message[1])
        elif kind == "dead":
            logger.error("engine core failed: %s", message[1])
            self._on_dead(message[1].splitlines()[0])

    def _on_outputs(self, outputs, engine_stats: dict, queue_times: dict, now: float) -> None:
        self._engine_stats = engine_stats
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
            self._send(("abort", stopped, int(RequestStatus.FINISHED_STOPPED)))
        for out in ready:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
            if out.finished:
                self._finish(out, it, now)
        if it is not None:
            self.stat_logger.record(it, engine_stats)

    def _finish(self, out: RequestOutput, it: Optional[IterationStats], now: float) -> None:
        rid = out.request_id
        self._streams.pop(rid, None)
        t = self._tracked.pop(rid, None)
        if t is None:
            return
        for cid in t.core_ids:
            self._core_to_parent.pop(cid, None)
            self._last_token_time.pop(cid, None)
        if it is not None:
            it.e2e_latencies.append(now - t.arrival_time)
            it.finish_reasons.extend(c.finish_reason or "abort" for c in out.outputs)

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
        """End these requests with ``error`` and abort them in the core."""
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


def _wait(proc: subprocess.Popen, timeout_s: float) -> Optional[int]:
    """The exit code, or None if the process still runs after ``timeout_s``."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


#: Engines whose core process may still run; stopped at interpreter exit so that
#: multiprocessing's own exit handler (which joins child processes) never waits forever.
_live_engines: "weakref.WeakSet[AsyncEngine]" = weakref.WeakSet()
_atexit_registered = False


def _track_live_engine(engine: AsyncEngine) -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_stop_live_engines)
        _atexit_registered = True
    _live_engines.add(engine)


def _stop_live_engines() -> None:
    for engine in list(_live_engines):
        try:
            engine._stop_process(5.0)
        except Exception:  # noqa: BLE001
            pass
