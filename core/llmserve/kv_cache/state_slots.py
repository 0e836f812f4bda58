"""Per-request state slots: one fixed-size state per running request, for every state layer.

A Mamba-style layer keeps a conv + SSM state per sequence that does not grow with its length.
The runner allocates each state layer as ``[num_slots, *shape]``; a request holds one slot
index, the same in every state layer, from its admission until it finishes or is preempted
(a preempted request recomputes its state from the start, like its KV blocks).
"""

from __future__ import annotations


class StateSlotPool:
    """Hands out slot indices ``0..num_slots-1``; O(1) allocate and free."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        # Popped from the end: slot 0 is handed out first.
        self._free = list(range(num_slots - 1, -1, -1))
        self._slot_of: dict[str, int] = {}

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def get(self, request_id: str) -> int | None:
        return self._slot_of.get(request_id)

    def can_allocate(self, request_id: str) -> bool:
        return request_id in self._slot_of or bool(self._free)

    def allocate(self, request_id: str) -> int:
        """The request's slot, taking a free one if it holds none (check ``can_allocate``)."""
        slot = self._slot_of.get(request_id)
        if slot is None:
            if not self._free:
                raise ValueError(f"no free state slot for request {request_id!r}")
            slot = self._slot_of[request_id] = self._free.pop()
        return slot

    def free(self, request_id: str) -> None:
        """Give the request's slot back; unknown requests are ignored."""
        slot = self._slot_of.pop(request_id, None)
        if slot is not None:
            self._free.append(slot)
