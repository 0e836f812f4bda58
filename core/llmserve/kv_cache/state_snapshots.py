"""Snapshots of per-request state at block boundaries: what makes prefix caching work for
models with state layers (Mamba and hybrids).

A paged layer's prefix hit reuses the K/V blocks of the prefix. A state layer keeps no per-
token history: its state after token ``n`` is all it knows. So a prefix of ``n`` tokens can
be reused only if the state after exactly those ``n`` tokens was kept. The engine keeps such
*snapshots* where a step of some request ends on a block boundary (the scheduler trims prefill
chunks to end there), keyed by the prefix hash of the block that ends at that boundary, in
extra rows of the state tensors (rows ``num_state_slots`` on). A later request whose prompt
shares that prefix restores the snapshot into its own slot and computes only the rest.

A snapshot is written by the step that computes it (the runner copies the request's slot
after the forward), so it may be read from the *next* scheduled step on. Snapshots are evicted
least recently used; a request's older snapshot that nobody restored is evicted first once it
has a newer one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class StateSnapshotCache:
    """``num_snapshots`` snapshot rows, starting at row ``first_row`` of the state tensors."""

    def __init__(self, num_snapshots: int, first_row: int) -> None:
        if num_snapshots < 1:
            raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
        self.num_snapshots = num_snapshots
        self._free = list(range(first_row + num_snapshots - 1, first_row - 1, -1))
        #: prefix hash -> [row, step that writes it, restored since]; least recently used first.
        self._rows: OrderedDict[Hashable, list] = OrderedDict()
        self.step = 0

    def __len__(self) -> int:
        return len(self._rows)

    def begin_step(self) -> None:
        """A new step is being scheduled: snapshots written by earlier steps become readable."""
        self.step += 1

    def lookup(self, key: Hashable) -> int | None:
        """The row holding the state after the prefix ``key`` ends, if an earlier step wrote it."""
        entry = self._rows.get(key)
        if entry is None or entry[1] >= self.step:
            return None
        return entry[0]

    def touch(self, key: Hashable) -> None:
        """``key`` was restored: keep it longest."""
        self._rows[key][2] = True
        self._rows.move_to_end(key)

    def take(self, key: Hashable) -> int | None:
        """A row for a new snapshot of ``key``, evicting the least recently used one if none
        is free; None when ``key`` already has one (the state after a prefix is unique)."""
        if key in self._rows:
            self._rows.move_to_end(key)
            return None
        row = self._free.pop() if self._free else self._rows.popitem(last=False)[1][0]
        self._rows[key] = [row, self.step, False]
        return row

    def rekey(self, old: Hashable, new: Hashable) -> None:
        """Move the snapshot under ``old`` to ``new`` as the most recent (dropped if ``new``
        already has one: the same state)."""
        if old not in self._rows:
            return
        if new in self._rows:
            self.discard(old)
            return
        self._rows[new] = self._rows.pop(old)

    def demote(self, key: Hashable) -> None:
        """Evict ``key`` first from now on, unless some request restored it: its owner has
        moved past it, and a prefix nobody else shared is unlikely to be asked for."""
        entry = self._rows.get(key)
        if entry is not None and not entry[2]:
            self._rows.move_to_end(key, last=False)

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (its write was cancelled: the step will not compute it)."""
        entry = self._rows.pop(key, None)
        if entry is not None:
            self._free.append(entry[0])

    def clear(self) -> None:
        for key in list(self._rows):
            self.discard(key)
