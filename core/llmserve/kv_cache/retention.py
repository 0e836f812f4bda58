"""Which of a request's paged blocks must stay: the per-kind rule of the KV cache manager.

Full attention needs every block until the request ends. Sliding-window attention needs only
the blocks that hold keys the next query can still see, so the leading blocks behind the
window go back to the pool while the request runs; that is what lets a windowed model run
sequences longer than its cache. The manager asks its retention rule, once per allocation,
how many leading blocks are no longer needed.

No torch here: ints only.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmserve.kv_cache.spec import AttentionSpec, CacheSpec, SlidingWindowSpec


class FullRetention:
    """Keep every block (full attention)."""

    window: int | None = None

    def num_unneeded_blocks(self, num_computed_tokens: int, block_size: int) -> int:
        """Leading blocks no query from ``num_computed_tokens`` on will read."""
        return 0

    def max_blocks_at_once(self, num_tokens: int, max_chunk: int, block_size: int) -> int:
        """Blocks a sequence of ``num_tokens`` holds at its peak, computed in chunks of at
        most ``max_chunk`` tokens."""
        return -(-num_tokens // block_size)


class WindowRetention(FullRetention):
    """Keep the blocks from the oldest key the next query sees (``window`` tokens back)."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"sliding window must be >= 1, got {window}")
        self.window = window

    def num_unneeded_blocks(self, num_computed_tokens: int, block_size: int) -> int:
        # The next query sits at position num_computed_tokens and sees keys from
        # num_computed_tokens - window + 1 on; blocks wholly before that are unneeded.
        return max(0, num_computed_tokens - self.window + 1) // block_size

    def max_blocks_at_once(self, num_tokens: int, max_chunk: int, block_size: int) -> int:
        # A chunk's own tokens plus the window behind its first one, over at most one
        # partial block at each end.
        span = min(num_tokens, max_chunk + self.window - 1)
        return min(-(-num_tokens // block_size), -(-span // block_size) + 1)


def retention_for(paged_specs: Sequence[CacheSpec]) -> FullRetention:
    """The rule for one block table shared by ``paged_specs``.

    Blocks may go only when every layer agrees: all windowed with one window. A table shared
    with any full-attention layer (or windows of different sizes) keeps the largest need, so
    mixed models are managed as full attention and their windowed layers only mask.
    """
    windows = {s.sliding_window if isinstance(s, SlidingWindowSpec) else None
               for s in paged_specs if isinstance(s, AttentionSpec)}
    if len(windows) == 1 and None not in windows:
        return WindowRetention(windows.pop())
    return FullRetention()
