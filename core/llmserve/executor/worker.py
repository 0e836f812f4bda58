"""One rank of an engine: its device, its process groups and its model runner.

Every executor drives ``Worker``s through the same methods; the multi-rank executors feed
each one the same stream of messages through a ``WorkerLoop``, so all ranks run the same
steps in the same order and meet in the same collectives. Every rank samples (the logits
are gathered everywhere, and seeded generators agree), so each keeps the tokens its next
step reads on its own device; only the output rank sends them back.

``python -m llmserve.executor.worker INIT_FD`` runs one rank in its own process: it reads
``WorkerInit`` from the inherited pipe, then serves the shared-memory rings until
"shutdown", until its engine's process is gone, or until a step raises (the error goes
back on its response ring and the process exits 1).
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from llmserve.runner.base import RunnerConfig

logger = logging.getLogger(__name__)

#: The variables that name the network interface of gloo's and NCCL's sockets.
LOOPBACK_INTERFACE_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


class Worker:
    """A rank's runner and the calls an executor makes on it."""

    def __init__(self, config: RunnerConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.platform = config.platform
        self.runner = None

    def init_device(self, device_index: int, init_method: Optional[str] = None) -> None:
        """Take local device ``device_index``, join the engine's process groups (more than one
        rank), then build the runner on that device.

        A ``file://`` rendezvous means every rank is on this machine: the collectives'
        sockets then stay on the loopback interface unless the user chose one."""
        self.platform.select_device(device_index)
        parallel = self.config.engine.parallel
        if parallel.world_size > 1:
            if init_method.startswith("file://"):
                for name in LOOPBACK_INTERFACE_ENV:
                    os.environ.setdefault(name, "lo")
            from llmserve.distributed.parallel_state import init_parallel_groups

            init_parallel_groups(parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                                 self.rank, self.platform.distributed_backend, init_method)
        self.runner = self.platform.model_runner_class()(self.config)

    def device_name(self) -> str:
        device = getattr(self.runner, "device", None)
        return str(device if device is not None else self.platform.device())

    def load_model(self) -> None:
        self.runner.load_model()

    def cache_specs(self) -> list:
        return self.runner.cache_specs()

    def memory_budget(self) -> int:
        """Bytes this rank can give its KV cache: measured after a profile run where the
        platform sizes the cache from free memory."""
        cfg = self.config.engine
        if self.platform.needs_profile_run:
            self.runner.profile_run(cfg.scheduler.max_num_batched_tokens,
                                    cfg.scheduler.max_num_seqs)
        return self.platform.kv_cache_budget_bytes(cfg.cache.kv_cache_memory,
                                                   cfg.cache.gpu_memory_utilization)

    def initialize_kv_cache(self, kv_config) -> None:
        self.runner.initialize_kv_cache(kv_config)

    def warm_up(self) -> None:
        self.runner.warm_up()

    def shutdown(self) -> None:
        from llmserve.distributed.parallel_state import destroy_parallel_groups

        destroy_parallel_groups()


class WorkerLoop:
    """Runs the message stream of one rank and says what to send back.

    Messages: ``("execute", SchedulerOutput)``, ``("sample", GrammarBitmask)``,
    ``("call", method, args)`` and ``("shutdown",)``. Replies: ``("output",
    ModelRunnerOutput)`` (the output rank only, one per "execute", in order) and
    ``("result", value)`` (every rank, one per "call"). A rank that raises sends
    ``("invalid", message)`` for a ``ValueError`` and ``("error", traceback)`` otherwise,
    then exits.

    When a step's output is read follows the engine core: a step it keeps in flight
    (asynchronous scheduling, something scheduled) is read after the next step is launched;
    a step waiting for its grammar bitmask, after "sample"; any other step, at once. Every
    rank reads its steps' outputs at the same points, so their input batches agree.
    """

    def __init__(self, worker: Worker, is_output_rank: bool) -> None:
        self.worker = worker
        self.is_output_rank = is_output_rank
        self.async_scheduling = worker.config.engine.scheduler.async_scheduling
        #: Launched steps not read yet: [handle, kept in flight, waits for "sample"].
        self._pending: deque[list] = deque()
        self.running = True

    def handle(self, message: tuple) -> list[tuple]:
        kind = message[0]
        runner = self.worker.runner
        if kind == "execute":
            so = message[1]
            handle = runner.execute_model_async(so)
            self._pending.append([handle, self.async_scheduling and not so.is_empty,
                                  bool(so.grammar_req_ids)])
            return self._read()
        if kind == "sample":
            runner.sample_tokens(message[1])
            self._pending[-1][2] = False
            return self._read()
        if kind == "call":
            replies = self._read(drain=True)
            _, method, args = message
            return replies + [("result", getattr(self.worker, method)(*args))]
        if kind == "shutdown":
            self.running = False
            return []
        raise ValueError(f"unknown worker message {kind!r}")

    def _read(self, drain: bool = False) -> list[tuple]:
        replies = []
        pending = self._pending
        while pending:
            handle, kept, waits = pending[0]
            if waits or (kept and len(pending) == 1 and not drain):
                break
            pending.popleft()
            output = handle.result()
            if self.is_output_rank:
                replies.append(("output", output))
        return replies


@dataclass
class WorkerInit:
    """What a worker process is started with (pickled through its init pipe)."""

    config: RunnerConfig
    rank: int
    device_index: int
    init_method: str
    is_output_rank: bool
    #: ``ShmRing.handle`` of the engine's message ring and of this rank's response ring.
    messages: tuple
    responses: tuple
    log_level: int = logging.WARNING


def serve(init: WorkerInit) -> None:
    """Build the rank, then answer the message ring until "shutdown"."""
    from llmserve.distributed.shm_ring import RingClosed, ShmRing

    parent = os.getppid()

    def engine_alive() -> None:
        if os.getppid() != parent:
            raise RingClosed("the engine's process is gone")

    messages = ShmRing.attach(init.messages, reader=init.rank)
    responses = ShmRing.attach(init.responses)
    worker = Worker(init.config, init.rank)
    try:
        worker.init_device(init.device_index, init.init_method)
        loop = WorkerLoop(worker, init.is_output_rank)
        responses.put(("result", "ready"), check=engine_alive)
        while loop.running:
            for reply in loop.handle(messages.get(check=engine_alive)):
                responses.put(reply, check=engine_alive)
    except RingClosed:
        raise SystemExit(1)
    except BaseException as exc:  # noqa: BLE001 - reported to the engine, then exit
        logger.debug("worker rank %d failed", init.rank, exc_info=True)
        # A ValueError is a bad setting for this model or machine: the engine re-raises it.
        reply = (("invalid", str(exc)) if isinstance(exc, ValueError) else
                 ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        try:
            responses.put(reply)
        except Exception:  # noqa: BLE001
            pass
        raise SystemExit(1)
    finally:
        worker.shutdown()
        messages.close()
        responses.close()


def main(argv: Optional[list[str]] = None) -> None:
    import pickle
    import sys
    from multiprocessing.connection import Connection

    # Ctrl-C and SIGTERM belong to the engine's process, which shuts its workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int((argv if argv is not None else sys.argv[1:])[0])
    conn = Connection(fd, readable=True, writable=False)
    init: Any = pickle.loads(conn.recv_bytes())
    conn.close()
    logging.basicConfig(level=init.log_level,
                        format=f"%(levelname)s %(name)s [rank {init.rank}]: %(message)s")
    serve(init)


if __name__ == "__main__":
    main()
