"""The shared-memory message ring: order, messages larger than a slot, back-pressure, and a
dead peer turning into an error instead of a hang."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from llmserve.distributed.shm_ring import RingClosed, ShmRing


@pytest.fixture
def ring():
    ring = ShmRing.create(num_readers=2, num_slots=4, slot_bytes=1024)
    yield ring
    ring.close()


def test_every_reader_gets_every_message_in_order(ring):
    readers = [ShmRing.attach(ring.handle, reader=r) for r in range(2)]
    for i in range(3):
        ring.put(("step", i))
    for reader in readers:
        assert reader.ready()
        assert [reader.get() for _ in range(3)] == [("step", 0), ("step", 1), ("step", 2)]
        assert not reader.ready()


def test_a_message_larger_than_a_slot_spans_slots(ring):
    reader = ShmRing.attach(ring.handle, reader=0)
    other = ShmRing.attach(ring.handle, reader=1)
    big = list(range(500))  # ~1.5 KB pickled: two 1 KB slots
    ring.put(big)
    ring.put("after")
    assert reader.get() == big and reader.get() == "after"
    assert other.get() == big and other.get() == "after"


def test_the_writer_waits_for_the_slowest_reader(ring):
    fast = ShmRing.attach(ring.handle, reader=0)
    ShmRing.attach(ring.handle, reader=1)  # never reads
    for i in range(4):
        ring.put(i)
    assert [fast.get() for _ in range(4)] == [0, 1, 2, 3]

    def slow_reader_gone():
        raise RingClosed("reader 1 is gone")

    start = time.monotonic()
    with pytest.raises(RingClosed, match="reader 1 is gone"):
        ring.put(4, check=slow_reader_gone)  # every slot still waits for reader 1
    assert time.monotonic() - start < 1


def test_a_reader_times_out_and_checks_its_peer(ring):
    reader = ShmRing.attach(ring.handle, reader=0)
    with pytest.raises(TimeoutError):
        reader.get(timeout_s=0.2)
    checks = []
    with pytest.raises(RingClosed):
        reader.get(check=lambda: checks.append(1) or (len(checks) > 2 and _closed()))
    assert len(checks) == 3


def _closed():
    raise RingClosed("writer gone")


def test_another_process_reads_the_ring():
    ring = ShmRing.create(num_readers=1, num_slots=2, slot_bytes=256)
    replies = ShmRing.create(num_readers=1, reader=0, num_slots=2, slot_bytes=256)
    code = textwrap.dedent(f"""
        from llmserve.distributed.shm_ring import ShmRing
        inbox = ShmRing.attach({ring.handle!r}, reader=0)
        outbox = ShmRing.attach({replies.handle!r})
        while (message := inbox.get(timeout_s=30)) != "stop":
            outbox.put(sum(message))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for n in (10, 100, 1000):  # the last one spans slots
            ring.put(list(range(n)))
            assert replies.get(timeout_s=30) == n * (n - 1) // 2
        ring.put("stop")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        ring.close()
        replies.close()
