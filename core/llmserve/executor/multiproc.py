"""One local worker process per rank, fed through shared memory.

The engine writes each message once into a ``ShmRing`` that every worker reads; each worker
answers on its own ring. Only the output rank answers steps, so a step costs one pickle in
and one out, whatever the world size. Workers are fresh interpreters
(``python -m llmserve.executor.worker``): nothing of the caller's ``__main__`` is re-run.

While the engine waits on a worker, it checks every 50 ms that all workers live; one that
exited turns into ``WorkerDiedError`` naming its rank and exit code, and the executor kills
the rest (a survivor may be stuck in a collective with the dead rank).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import weakref
from multiprocessing import Pipe
from typing import Any, Optional

from llmserve.distributed.shm_ring import ShmRing
from llmserve.executor.base import RemoteExecutor, WorkerDiedError, device_index, output_rank
from llmserve.executor.worker import WorkerInit
from llmserve.runner.base import RunnerConfig
from llmserve.scheduler.output import ModelRunnerOutput

logger = logging.getLogger(__name__)

#: Seconds a worker may take to start (import torch, join the process groups, build its
#: runner), and to exit after "shutdown" before it is killed.
START_TIMEOUT_S = 300.0
EXIT_TIMEOUT_S = 10.0


def worker_env(config: RunnerConfig) -> dict[str, str]:
    """The environment of a local worker: the host's cores shared out between the ranks
    (each rank's torch would otherwise start a thread per core, and the ranks of a CPU
    engine would fight over them), unless the user set ``OMP_NUM_THREADS``."""
    env = dict(os.environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    world = config.engine.parallel.world_size
    env.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // world)))
    return env


class MultiprocExecutor(RemoteExecutor):
    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        world = self.parallel.world_size
        self.output_rank = output_rank(config)
        self.messages = ShmRing.create(num_readers=world)
        self.responses = [ShmRing.create(num_readers=1, reader=0) for _ in range(world)]
        self.procs: list[subprocess.Popen] = []
        self._dead: Optional[str] = None
        self._rendezvous = tempfile.mkdtemp(prefix="llmserve-ranks-")
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.messages,
                                           self.responses, self._rendezvous)
        # A file rendezvous: nothing listens on a socket (the TCP store would bind every
        # interface).
        init_method = f"file://{self._rendezvous}/store"
        level = logging.getLogger("llmserve").getEffectiveLevel()
        for rank in range(world):
            self.procs.append(self._spawn(WorkerInit(
                config, rank, device_index(config, rank), init_method,
                rank == self.output_rank, self.messages.handle, self.responses[rank].handle,
                level)))
        try:
            for rank in range(world):
                self._reply(rank, timeout_s=START_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def _spawn(init: WorkerInit) -> subprocess.Popen:
        read, write = Pipe(duplex=False)
        fd = read.fileno()
        proc = subprocess.Popen([sys.executable, "-m", "llmserve.executor.worker", str(fd)],
                                pass_fds=(fd,), env=worker_env(init.config))
        read.close()
        write.send_bytes(pickle.dumps(init, protocol=pickle.HIGHEST_PROTOCOL))
        write.close()
        return proc

    # ---- health --------------------------------------------------------------------------

    def check_workers(self) -> None:
        """Raise ``WorkerDiedError`` if a worker has exited."""
        if self._dead is not None:
            raise WorkerDiedError(self._dead)
        for rank, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                detail = self._last_error(rank)
                raise WorkerDiedError(self._fail(
                    f"worker rank {rank} (pid {proc.pid}) exited with code {code}"
                    + (f": {detail}" if detail else "") + "; the engine cannot continue"))

    def _last_error(self, rank: int) -> Optional[str]:
        ring = self.responses[rank]
        try:
            while ring.ready():
                kind, value = ring.get()
                if kind in ("error", "invalid"):
                    return value.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - a half-written reply: no detail to give
            pass
        return None

    def _reply(self, rank: int, timeout_s: Optional[float] = None) -> Any:
        kind, value = self.responses[rank].get(check=self.check_workers, timeout_s=timeout_s)
        if kind == "invalid":
            self._fail(f"worker rank {rank}: {value}")
            raise ValueError(value)
        if kind == "error":
            raise WorkerDiedError(self._fail(f"worker rank {rank} failed: {value}"))
        return value

    def _fail(self, reason: str) -> str:
        """Mark the engine dead for ``reason`` and kill the surviving ranks (one may be stuck
        in a collective with the failed one); returns the reason."""
        self._dead = reason
        logger.error("%s", reason)
        _kill(self.procs)
        return reason

    # ---- calls ---------------------------------------------------------------------------

    def _broadcast(self, message: tuple) -> None:
        self.check_workers()
        self.messages.put(message, check=self.check_workers)

    def _call(self, method: str, *args) -> list:
        self._broadcast(("call", method, args))
        return [self._reply(rank) for rank in range(len(self.procs))]

    def _next_output(self) -> ModelRunnerOutput:
        return self._reply(self.output_rank)

    def shutdown(self) -> None:
        if self._finalizer.alive and self._dead is None:
            try:
                self.messages.put(("shutdown",), check=self.check_workers)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self._finalizer()


def _kill(procs: list) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(procs: list, messages: ShmRing, responses: list, rendezvous: str) -> None:
    """Give workers a moment to exit (after "shutdown"), kill the rest, free the rings and
    the rendezvous."""
    for proc in procs:
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    _kill(procs)
    messages.close()
    for ring in responses:
        ring.close()
    shutil.rmtree(rendezvous, ignore_errors=True)

