"""Workers placed on a Ray cluster, one actor per rank, for engines that span machines.

The engine joins the cluster it finds (``ray start --head`` / ``RAY_ADDRESS``, or a Ray
already initialised in this process), reserves one bundle per rank in a placement group
(a GPU each where the platform has devices), and starts a ``RayWorker`` actor in each.
Each message is put in Ray's object store once and handed to every actor; the actors run
the same ``WorkerLoop`` as local worker processes, and Ray runs one caller's calls to an
actor in order. The process groups meet at rank 0's node address.

Every wait on Ray is bounded: a call that does not answer within its timeout, or an actor
that died, turns into ``WorkerDiedError``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections import deque
from typing import Any, Optional

from llmserve.executor.base import RemoteExecutor, WorkerDiedError, device_index, output_rank
from llmserve.executor.worker import Worker, WorkerLoop
from llmserve.runner.base import RunnerConfig

logger = logging.getLogger(__name__)

#: Seconds to wait for the placement group, for a start-up call, and between health checks
#: while a step runs.
PLACEMENT_TIMEOUT_S = 120.0
START_TIMEOUT_S = 300.0
POLL_S = 0.05


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("distributed_executor_backend 'ray' needs Ray: "
                         "pip install 'llmserve[ray]'") from None
    return ray


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (the rendezvous of ranks on several
    machines)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RayWorker:
    """The actor body: one rank's ``Worker`` behind a ``WorkerLoop``."""

    def __init__(self, config: RunnerConfig, rank: int, is_output_rank: bool) -> None:
        self.worker = Worker(config, rank)
        self.is_output_rank = is_output_rank
        self.loop: Optional[WorkerLoop] = None

    def node_address(self) -> tuple[str, int]:
        """This node's address and a free port on it (rank 0's is the rendezvous of ranks
        on several machines)."""
        import ray

        address = ray.util.get_node_ip_address()
        return address, free_port(address)

    def init_device(self, device_index: int, init_method: str) -> None:
        self.worker.init_device(device_index, init_method)
        self.loop = WorkerLoop(self.worker, self.is_output_rank)

    def handle(self, message: tuple) -> list[tuple]:
        return self.loop.handle(message)


class RayExecutor(RemoteExecutor):
    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        ray = self.ray = _import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
        world = self.parallel.world_size
        uses_gpus = config.platform.device_visibility_env is not None
        bundle = {"GPU": 1, "CPU": 1} if uses_gpus else {"CPU": 1}
        self.group = placement_group([dict(bundle) for _ in range(world)], strategy="PACK")
        self._get(self.group.ready(), PLACEMENT_TIMEOUT_S,
                  f"placement group of {world} x {bundle} not placed")
        actor_cls = ray.remote(RayWorker)
        self.output_rank = output_rank(config)
        self.actors = [
            actor_cls.options(
                num_cpus=1, num_gpus=1 if uses_gpus else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.group, placement_group_bundle_index=rank)
            ).remote(config, rank, rank == self.output_rank)
            for rank in range(world)]
        self._dead: Optional[str] = None
        #: Per actor, its calls not yet answered: the output rank's answers are read in
        #: order; the others' are only checked for failures.
        self._calls: list[deque] = [deque() for _ in range(world)]
        self._outputs: deque = deque()
        self._rendezvous: Optional[str] = None
        try:
            addresses = self._get([actor.node_address.remote() for actor in self.actors],
                                  START_TIMEOUT_S, "workers did not answer")
            if len({ip for ip, _ in addresses} | {ray.util.get_node_ip_address()}) == 1:
                # One machine: a file rendezvous, so nothing listens on a socket.
                self._rendezvous = tempfile.mkdtemp(prefix="llmserve-ranks-")
                init_method = f"file://{self._rendezvous}/store"
            else:
                init_method = "tcp://{}:{}".format(*addresses[0])
            # Ray places each actor's GPU in its own visibility list: its device is index 0.
            self._get([actor.init_device.remote(0 if uses_gpus else device_index(config, r),
                                                init_method)
                       for r, actor in enumerate(self.actors)], START_TIMEOUT_S,
                      "workers did not start")
        except BaseException:
            self.shutdown()
            raise

    # ---- waiting -------------------------------------------------------------------------

    def _get(self, refs, timeout_s: float, what: str) -> Any:
        ray = self.ray
        try:
            return ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WorkerDiedError(f"{what} within {timeout_s:.0f} s") from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ValueError):  # a bad setting a rank found: as in `mp`
                self._dead = f"a Ray worker: {exc.cause}"
                raise ValueError(str(exc.cause)) from None
            raise self._died(exc) from None
        except ray.exceptions.RayError as exc:
            raise self._died(exc) from None

    def _died(self, exc: BaseException) -> WorkerDiedError:
        self._dead = f"a Ray worker failed: {type(exc).__name__}: {exc}".splitlines()[0] \
            + "; the engine cannot continue"
        logger.error("%s", self._dead)
        return WorkerDiedError(self._dead)

    def check_workers(self) -> None:
        """Raise ``WorkerDiedError`` if a call to any rank failed (its actor died)."""
        if self._dead is not None:
            raise WorkerDiedError(self._dead)
        for rank, calls in enumerate(self._calls):
            if rank == self.output_rank:
                continue
            while calls:
                done, _ = self.ray.wait([calls[0]], timeout=0)
                if not done:
                    break
                self._get(calls.popleft(), POLL_S, f"rank {rank}")

    # ---- calls ---------------------------------------------------------------------------

    def _send(self, message: tuple) -> list:
        """One call per actor with ``message`` (put in the object store once)."""
        self.check_workers()
        shared = self.ray.put(message)
        return [actor.handle.remote(shared) for actor in self.actors]

    def _broadcast(self, message: tuple) -> None:
        for calls, ref in zip(self._calls, self._send(message)):
            calls.append(ref)

    def _wait(self, ref, rank: int) -> list[tuple]:
        """``ref``'s replies, checking the other ranks while it runs."""
        while True:
            done, _ = self.ray.wait([ref], timeout=POLL_S)
            if done:
                return self._get(ref, POLL_S, f"rank {rank}")
            self.check_workers()

    def _call(self, method: str, *args) -> list:
        results = []
        for rank, ref in enumerate(self._send(("call", method, args))):
            replies = self._wait(ref, rank)
            if rank == self.output_rank:
                self._outputs.extend(v for kind, v in replies if kind == "output")
            results.append(replies[-1][1])
        return results

    def _next_output(self):
        rank = self.output_rank
        while not self._outputs:
            replies = self._wait(self._calls[rank].popleft(), rank)
            self._outputs.extend(v for kind, v in replies if kind == "output")
        return self._outputs.popleft()

    def shutdown(self) -> None:
        ray = self.ray
        for actor in getattr(self, "actors", ()):
            ray.kill(actor)
        self.actors = []
        group = getattr(self, "group", None)
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
            self.group = None
        if getattr(self, "_rendezvous", None) is not None:
            shutil.rmtree(self._rendezvous, ignore_errors=True)
            self._rendezvous = None
