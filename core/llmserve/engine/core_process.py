"""The engine core in its own process, and the messages it exchanges with the front end.

``AsyncEngine`` starts ``python -m llmserve.engine.core_process`` as a child process and
talks to it over two one-way ``multiprocessing.connection`` pipes whose file descriptors the
child inherits, so the HTTP front end (tokenizing, detokenizing, streaming) and the model never
fight over one GIL. (A fresh interpreter, like multiprocessing's ``spawn``, but without
``spawn``'s re-import of the parent's ``__main__``: a script that starts an engine needs no
``if __name__ == "__main__"`` guard.)

Front end -> core (one pickled tuple per message):

    ("init", EngineArgs as a dict, log level)
                                          the first message; the core builds its own plugin
                                          manager and resolves the arguments (the front end
                                          never imports the resolver, the models or the
                                          platforms: all it learns comes in "ready")
    ("add", [EngineCoreRequest, ...])    all of one user request's completions; accepted whole
                                          or rejected whole (answered in an "acks" message)
    ("abort", [core request id, ...], RequestStatus)
                                          FINISHED_ABORTED (client gone) frees the KV blocks;
                                          FINISHED_STOPPED (the front end matched a stop string)
    ("shutdown",)                         finish the loop and exit 0

Core -> front end:

    ("ready", info)                       after start-up; ``info`` is
                                          ``EngineInfo.to_message()``: plain values only
    ("startup_failed", kind, message)     start-up raised; the process then exits 1. kind
                                          "invalid": a ValueError (a bad argument for this
                                          model or machine); "error": anything else
    ("acks", [(first core id, None | (error kind, message)), ...])
                                          one per "add", in order; kinds: "queue_full", "invalid"
    ("outputs", [EngineCoreOutput, ...], stats, queue_times)
                                          after every step; ``stats`` is ``EngineCore.stats()``
                                          plus the free block count; ``queue_times`` maps core
                                          ids first scheduled in that step to seconds waited
    ("stats", stats)                      after input changed the state while idle (an abort)
    ("dead", message)                     the loop raised; the process then exits 1

The core exits when its input pipe closes, so a front end that dies takes its core with it.
It ignores SIGINT and SIGTERM: a Ctrl-C or a service manager's SIGTERM to the whole process
group must reach only the front end, which drains in-flight requests before sending
"shutdown".
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from dataclasses import asdict, dataclass, fields
from typing import Any

from llmserve.config import EngineConfig
from llmserve.engine.input_processor import ModelFacts, read_model_facts

logger = logging.getLogger(__name__)


@dataclass
class EngineInfo:
    """What the front end learns from a started core: the resolved configuration, the model
    facts its ``InputProcessor`` is built from, and the KV cache the core allocated."""

    pid: int
    #: The torch device the model runs on ("cpu", "cuda:0").
    device: str
    num_blocks: int
    block_size: int
    kv_capacity_tokens: int
    startup_s: float
    config: EngineConfig
    model: ModelFacts

    def to_message(self) -> dict[str, Any]:
        """Plain values (no class of the core's) for the "ready" message."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["config"] = self.config.model_dump()
        values["model"] = asdict(self.model)
        return values

    @classmethod
    def from_message(cls, values: dict[str, Any]) -> "EngineInfo":
        return cls(**{**values, "config": EngineConfig.model_validate(values["config"]),
                      "model": ModelFacts(**values["model"])})


def main(argv: list[str] | None = None) -> None:
    """``python -m llmserve.engine.core_process INPUT_FD OUTPUT_FD``."""
    import sys
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd_in, fd_out = (int(a) for a in (argv if argv is not None else sys.argv[1:]))
    input_conn = Connection(fd_in, readable=True, writable=False)
    output_conn = Connection(fd_out, readable=False, writable=True)
    try:
        kind, engine_args, log_level = input_conn.recv()
    except (EOFError, OSError):
        raise SystemExit(1)
    if kind != "init":
        raise SystemExit(f"expected an init message, got {kind!r}")
    run_engine_core(engine_args, input_conn, output_conn, log_level)


def run_engine_core(engine_args: dict[str, Any], input_conn, output_conn,
                    log_level: int = logging.WARNING) -> None:
    """Build the core and serve the front end until "shutdown" or the input pipe closes."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s [core]: %(message)s")
    try:
        core = _build_core(engine_args)
    except ValueError as exc:
        logger.debug("engine core start-up failed", exc_info=True)
        _send_quietly(output_conn, ("startup_failed", "invalid", str(exc)))
        raise SystemExit(1)
    except BaseException as exc:  # noqa: BLE001 - anything at start-up is reported the same way
        logger.debug("engine core start-up failed", exc_info=True)
        _send_quietly(output_conn, ("startup_failed", "error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)
    try:
        output_conn.send(("ready", engine_info(core).to_message()))
        EngineCoreLoop(core, input_conn, output_conn).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the front end went away: nothing left to tell anyone
    except BaseException as exc:  # noqa: BLE001
        _send_quietly(output_conn, ("dead", f"{type(exc).__name__}: {exc}\n"
                                            f"{traceback.format_exc()}"))
        raise SystemExit(1)
    finally:
        core.shutdown()  # stops the worker ranks, if any


def engine_info(core) -> EngineInfo:
    """The "ready" message's contents for a started ``EngineCore``."""
    config = core.resolved.config
    return EngineInfo(pid=os.getpid(), device=str(core.device), num_blocks=core.num_blocks,
                      block_size=config.cache.block_size,
                      kv_capacity_tokens=core.kv_capacity_tokens, startup_s=core.startup_s,
                      config=config, model=read_model_facts(core.resolved))


def _build_core(engine_args: dict[str, Any]):
    from llmserve.config import EngineArgs
    from llmserve.engine.core import EngineCore
    from llmserve.engine.resolver import resolve_engine
    from llmserve.plugins import get_plugin_manager

    pm = get_plugin_manager()
    resolved = resolve_engine(EngineArgs(**engine_args), pm)
    return EngineCore(resolved, pm)


def _send_quietly(conn, message) -> None:
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass


class EngineCoreLoop:
    """Drain input, step while there is work, send outputs; block on input when idle."""

    def __init__(self, core, input_conn, output_conn) -> None:
        self.core = core
        self.input_conn = input_conn
        self.output_conn = output_conn
        #: Requests not yet scheduled: core id -> scheduler Request (for queue times).
        self._unscheduled: dict[str, Any] = {}
        #: Acks held until the requests' grammars compiled: first core id -> (the core ids,
        #: their grammar futures).
        self._held_acks: dict[str, tuple[list[str], list]] = {}
        self._running = True

    def run(self) -> None:
        from llmserve.request import RequestStatus

        core = self.core
        conn = self.input_conn
        send = self.output_conn.send
        while self._running:
            if not core.has_unfinished_requests():
                # Idle: wait for input (EOF also wakes us); held acks still need sending.
                conn.poll(0.005 if self._held_acks else None)
            acks: list = []
            changed = False
            while self._running and conn.poll(0):
                changed |= self._handle(conn.recv(), acks, RequestStatus)
            if self._held_acks:
                compiled = self._compiled_acks()
                acks.extend(compiled)
                changed |= bool(compiled)
            if acks:
                send(("acks", acks))
            if not self._running:
                break
            if core.has_unfinished_requests():
                outputs = core.step()
                if outputs or changed or core.scheduler.running:
                    send(("outputs", outputs, self._stats(), self._queue_times()))
            elif changed:
                send(("stats", self._stats()))

    def _handle(self, message, acks: list, RequestStatus) -> bool:
        """Apply one input message; returns whether the core's state changed."""
        kind = message[0]
        if kind == "add":
            ack = self._add(message[1])
            if ack is not None:
                acks.append(ack)
            return True
        if kind == "abort":
            ids, status = message[1], RequestStatus(message[2])
            self.core.abort_requests(ids, status)
            for rid in ids:
                self._unscheduled.pop(rid, None)
                self._held_acks.pop(rid, None)
            return True
        if kind == "shutdown":
            self._running = False
            return False
        raise ValueError(f"unknown engine-core message {kind!r}")

    def _add(self, requests: list) -> "tuple | None":
        from llmserve.scheduler.scheduler import QueueFullError

        core = self.core
        first = requests[0].request_id
        added: list[str] = []
        futures = []
        try:
            for req in requests:
                future = core.add_request(req)
                added.append(req.request_id)
                if future is not None:
                    futures.append(future)
        except (QueueFullError, ValueError) as exc:
            if added:
                core.abort_requests(added)
            kind = "queue_full" if isinstance(exc, QueueFullError) else "invalid"
            return (first, (kind, str(exc)))
        scheduler_requests = core.scheduler.requests
        for rid in added:
            self._unscheduled[rid] = scheduler_requests[rid]
        if futures:
            # Acknowledged once compiled, so a bad grammar is refused like any bad request.
            self._held_acks[first] = (added, futures)
            return None
        return (first, None)

    def _compiled_acks(self) -> list:
        """Acks of held requests whose grammars are all done: refused if one failed (its
        requests were already dropped by the scheduler; the others are aborted)."""
        acks = []
        for first, (ids, futures) in list(self._held_acks.items()):
            if not all(f.done() for f in futures):
                continue
            del self._held_acks[first]
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                self.core.abort_requests(ids)
                for rid in ids:
                    self._unscheduled.pop(rid, None)
                acks.append((first, ("invalid", str(errors[0]))))
            else:
                acks.append((first, None))
        return acks

    def _queue_times(self) -> dict[str, float]:
        """Seconds from arrival to first scheduling, for requests scheduled this step."""
        if not self._unscheduled:
            return {}
        times = {}
        for rid, req in self._unscheduled.items():
            if req.first_scheduled_time is not None:
                times[rid] = max(0.0, req.first_scheduled_time - req.arrival_time)
        for rid in times:
            del self._unscheduled[rid]
        # A request finished before it was ever scheduled (aborted as too large): forget it.
        if self._unscheduled and len(self._unscheduled) > len(self.core.scheduler.requests):
            live = self.core.scheduler.requests
            for rid in [r for r in self._unscheduled if r not in live]:
                del self._unscheduled[rid]
        return times

    def _stats(self) -> dict:
        stats = self.core.stats()
        stats["num_free_blocks"] = self.core.kv_manager.num_free_blocks
        return stats


if __name__ == "__main__":
    main()
