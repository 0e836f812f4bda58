"""A one-writer, many-reader message ring in shared memory: how the engine hands every step
to its workers, and how a worker hands its outputs back, without a socket.

Each message is pickled once into slots of a ``multiprocessing.shared_memory`` block; every
reader copies it out of the same bytes. The writer publishes a slot by advancing a sequence
counter after writing it; each reader advances its own counter after reading, and the writer
reuses a slot only once every reader has passed it. A message larger than a slot spans
consecutive slots. Waiting yields the CPU for 2 ms, then sleeps that grow to 0.2 ms, and a
``check`` callback runs while waiting so that a dead peer raises instead of hanging.

Layout: ``[write_seq][read_seq x readers]`` (8-byte counters), then the slots, each
``[length][more]`` (8 bytes each) and the data. The counters are aligned 8-byte stores, and
a reader trusts a slot once it sees the counter past it: that needs the writer's stores to
become visible in program order, which x86-64 guarantees. Weakly ordered CPUs (ARM64) are
not covered yet.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
from multiprocessing import shared_memory
from typing import Any, Callable, Optional

_COUNTER = struct.Struct("<q")
_SLOT_HEADER = struct.Struct("<qq")
#: How long a wait yields the CPU between polls before it starts to sleep (a yield returns
#: at once on an idle core, so a step's reply is seen within microseconds; on a busy host
#: it hands the core to whoever computes), the longest sleep after that (seconds), and the
#: longest once the wait has lasted ``_IDLE_AFTER_S`` (an idle engine costs its workers
#: ~nothing).
_YIELD_S = 0.002
_MAX_SLEEP_S = 0.0002
_IDLE_AFTER_S = 0.5
_IDLE_SLEEP_S = 0.02
#: How often a waiting side runs its ``check`` (seconds).
_CHECK_EVERY_S = 0.05


class RingClosed(RuntimeError):
    """The peer is gone (a ``check`` callback raises it, or a subclass)."""


class ShmRing:
    """One ring. One process creates and later unlinks it (``ShmRing.create``), as its writer
    or as one of its readers; the others attach by name (``ShmRing.attach``). ``reader`` is
    the reader's index, None for the writer."""

    def __init__(self, shm: shared_memory.SharedMemory, num_readers: int, num_slots: int,
                 slot_bytes: int, reader: Optional[int], owner: bool) -> None:
        self.shm = shm
        self.buf = shm.buf
        self.num_readers = num_readers
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        self.reader = reader
        self.owner = owner
        self._header = 8 * (1 + num_readers)
        self._seq = 0  # the writer's next slot, or this reader's

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def create(cls, num_readers: int, reader: Optional[int] = None, num_slots: int = 8,
               slot_bytes: int = 4 << 20) -> "ShmRing":
        size = 8 * (1 + num_readers) + num_slots * slot_bytes
        shm = shared_memory.SharedMemory(create=True, size=size)
        shm.buf[:8 * (1 + num_readers)] = bytes(8 * (1 + num_readers))
        return cls(shm, num_readers, num_slots, slot_bytes, reader, owner=True)

    @property
    def handle(self) -> tuple[str, int, int, int]:
        """What a reader in another process attaches with (picklable)."""
        return (self.shm.name, self.num_readers, self.num_slots, self.slot_bytes)

    @classmethod
    def attach(cls, handle: tuple[str, int, int, int],
               reader: Optional[int] = None) -> "ShmRing":
        name, num_readers, num_slots, slot_bytes = handle
        if reader is not None and not 0 <= reader < num_readers:
            raise ValueError(f"reader must be in [0, {num_readers - 1}], got {reader}")
        shm = shared_memory.SharedMemory(name=name)
        _untrack(shm)
        return cls(shm, num_readers, num_slots, slot_bytes, reader, owner=False)

    def close(self) -> None:
        self.buf = None
        self.shm.close()
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    # ---- counters ------------------------------------------------------------------------

    def _get(self, index: int) -> int:
        return _COUNTER.unpack_from(self.buf, 8 * index)[0]

    def _set(self, index: int, value: int) -> None:
        _COUNTER.pack_into(self.buf, 8 * index, value)

    def _slot(self, seq: int) -> int:
        return self._header + (seq % self.num_slots) * self.slot_bytes

    # ---- writing and reading -------------------------------------------------------------

    def put(self, message: Any, check: Optional[Callable[[], None]] = None) -> None:
        """Publish ``message`` to every reader; waits while the ring is full."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        room = self.slot_bytes - _SLOT_HEADER.size
        view = memoryview(data)
        offset = 0
        while True:
            chunk = view[offset:offset + room]
            offset += len(chunk)
            seq = self._seq
            _wait(lambda: min(self._get(1 + r) for r in range(self.num_readers))
                  > seq - self.num_slots, check)
            start = self._slot(seq)
            more = offset < len(data)
            _SLOT_HEADER.pack_into(self.buf, start, len(chunk), int(more))
            body = start + _SLOT_HEADER.size
            self.buf[body:body + len(chunk)] = chunk
            self._seq = seq + 1
            self._set(0, seq + 1)
            if not more:
                return

    def get(self, check: Optional[Callable[[], None]] = None,
            timeout_s: Optional[float] = None) -> Any:
        """The next message; waits for it (raises ``TimeoutError`` after ``timeout_s``)."""
        parts = []
        while True:
            seq = self._seq
            _wait(lambda: self._get(0) > seq, check, timeout_s)
            start = self._slot(seq)
            length, more = _SLOT_HEADER.unpack_from(self.buf, start)
            body = start + _SLOT_HEADER.size
            parts.append(bytes(self.buf[body:body + length]))
            self._seq = seq + 1
            self._set(1 + self.reader, seq + 1)
            if not more:
                return pickle.loads(parts[0] if len(parts) == 1 else b"".join(parts))

    def ready(self) -> bool:
        """Whether a message waits for this reader (it never blocks)."""
        return self._get(0) > self._seq


def _wait(done: Callable[[], bool], check: Optional[Callable[[], None]],
          timeout_s: Optional[float] = None) -> None:
    if done():
        return
    start = last_check = time.monotonic()
    sleep = 1e-5
    while not done():
        now = time.monotonic()
        if now - start < _YIELD_S:
            os.sched_yield()
            continue
        time.sleep(sleep)
        sleep = min(sleep * 2, _MAX_SLEEP_S if now - start < _IDLE_AFTER_S else _IDLE_SLEEP_S)
        if check is not None and now - last_check >= _CHECK_EVERY_S:
            check()
            last_check = now
        if timeout_s is not None and now - start >= timeout_s:
            raise TimeoutError(f"no message within {timeout_s} s")


def _untrack(shm: shared_memory.SharedMemory) -> None:
    """Keep this process's resource tracker from unlinking a block another process owns
    when this one exits (Python < 3.13 registers blocks it only attached to)."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    except Exception:  # noqa: BLE001 - 3.13+ does not track attached blocks
        pass
