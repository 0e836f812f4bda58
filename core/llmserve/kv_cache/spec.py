"""What each layer keeps between steps, and how many KV blocks a memory budget buys.

A model describes every layer's cache needs with a ``CacheSpec``; the engine sums them to
size the cache. Two shapes of need exist:

* Paged specs (``FullAttentionSpec``) grow with the sequence: memory is handed out in blocks of
  ``block_size`` tokens, one block id serving the same token range in every attention layer,
  so a request's block table is shared across layers and the block pool is sized once.
* Per-request state specs (``PerRequestStateSpec``) do not grow with tokens: a Mamba layer
  keeps one conv + SSM state per running request, whatever its length. These are sized in
  *slots* (one per concurrently running sequence), not blocks.

How a state-space plugin plugs in: subclass ``PerRequestStateSpec`` (e.g. ``FixedStateSpec``
with the conv and SSM state shapes, ``state_bytes`` = their sum in bytes), return it from the
``cache specs`` hook for its layers, reserve ``max_num_seqs * sum(state_bytes)`` out of the
budget, and hand the rest to ``num_blocks_for_budget`` with the attention specs only. Its own
state manager hands a slot to a request on admission and takes it back on free/preemption;
the paged ``KVCacheManager`` is not involved. Pure-SSM models pass no paged spec at all.

No torch here: sizes are plain ints so the scheduler side stays device-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheSpec:
    """What one layer needs cached. Frozen so specs can be compared and used as dict keys."""

    #: True when memory grows with the token count and is handed out in blocks.
    is_paged = True

    @property
    def page_size_bytes(self) -> int:
        """Bytes one unit of this cache takes for ONE layer: a block for paged specs, a
        request slot for per-request state."""
        raise NotImplementedError


@dataclass(frozen=True)
class FullAttentionSpec(CacheSpec):
    """Paged K and V for a full (causal, unwindowed) attention layer."""

    block_size: int
    num_kv_heads: int
    head_size: int
    dtype_bytes: int

    def __post_init__(self) -> None:
        for name in ("block_size", "num_kv_heads", "head_size", "dtype_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"FullAttentionSpec.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def page_size_bytes(self) -> int:
        # K and V, each [block_size, num_kv_heads, head_size].
        return 2 * self.block_size * self.num_kv_heads * self.head_size * self.dtype_bytes


@dataclass(frozen=True)
class PerRequestStateSpec(CacheSpec):
    """Base for a fixed-size state per running request (Mamba conv + SSM state, ...).

    ``state_bytes`` is the size of one request's state for ONE layer; it never grows with the
    sequence, so it is not paged. Subclasses may add shape fields; they must keep
    ``state_bytes`` equal to the real footprint because the engine reserves memory from it.
    """

    is_paged = False

    state_bytes: int

    def __post_init__(self) -> None:
        if self.state_bytes < 1:
            raise ValueError(
                f"{type(self).__name__}.state_bytes must be >= 1, got {self.state_bytes}")

    @property
    def page_size_bytes(self) -> int:
        return self.state_bytes


def num_blocks_for_budget(layer_specs: list[CacheSpec], budget_bytes: int) -> int:
    """How many KV blocks fit in ``budget_bytes`` when every paged layer stores each block.

    All paged layers share block ids, so one block costs the sum of their page sizes.
    Per-request state specs are rejected: their memory is a per-sequence reservation the
    caller subtracts from the budget first (see the module docstring).
    """
    if not layer_specs:
        raise ValueError("num_blocks_for_budget needs at least one paged layer spec")
    state = [s for s in layer_specs if not s.is_paged]
    if state:
        raise ValueError(
            f"{type(state[0]).__name__} is a per-request state spec, not paged; reserve its "
            f"memory (max_num_seqs * state_bytes) and pass only the paged specs here"
        )
    bytes_per_block = sum(s.page_size_bytes for s in layer_specs)
    num_blocks = budget_bytes // bytes_per_block
    if num_blocks < 1:
        raise ValueError(
            f"KV cache budget of {budget_bytes} bytes is too small: one block across "
            f"{len(layer_specs)} layers needs {bytes_per_block} bytes. Raise the KV cache memory "
            f"(kv_cache_memory / gpu_memory_utilization) or shrink the model or block size."
        )
    return num_blocks
