"""What each layer keeps between steps (``CacheSpec``), and how a memory budget is split.

A model reports one spec per caching layer; the engine merges what the
``llmserve_cache_specs`` hook contributes into a registry of spec kinds and checks every
layer's spec against it, then sizes the cache (``plan_kv_cache``) and builds one
``KVCacheManager`` that handles each kind by what it is: paged specs share one block table
under a retention rule (``llmserve.kv_cache.retention``), state specs get per-request slots. A
plugin's spec subclasses one of the kinds below and inherits its handling.

Two shapes of need exist:

* **Paged** specs grow with the sequence. Memory is handed out in blocks of ``block_size``
  tokens, and one block id serves the same token range in every paged layer, so a request has
  one block table and the block pool is sized once. ``FullAttentionSpec`` keeps every block;
  ``SlidingWindowSpec`` lets blocks that fell behind the window go back to the pool. When a
  model mixes the two (some layers windowed, some not), the shared table must keep every block
  for the full layers, so it is managed as full attention and the windowed layers only mask.
* **Per-request state** specs (``PerRequestStateSpec``) do not grow with tokens: a Mamba layer
  keeps one conv + SSM state per running request whatever its length. Their memory is one
  *slot* per concurrently running sequence (``max_num_seqs`` slots), reserved from the budget
  before the paged blocks get the rest; a request holds the same slot index in every state
  layer from admission until it finishes or is preempted. With prefix caching, as many rows
  again hold *snapshots* of states at block boundaries (``llmserve.kv_cache.state_snapshots``),
  so a prefix hit can restore the state of the prefix.

No torch here: sizes are plain ints, so the scheduler side stays device-agnostic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


#: The dtypes a state tensor may be kept in, and their sizes.
STATE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class CacheSpec:
    """What one layer needs cached. Frozen so specs compare by value and can be dict keys.

    Subclasses set ``kind`` (the name they are registered under in the
    ``llmserve_cache_specs`` hook) and ``is_paged``.
    """

    #: Registry name of this kind of cache.
    kind: ClassVar[str] = ""
    #: True when memory grows with the token count and is handed out in blocks.
    is_paged: ClassVar[bool] = True

    @property
    def page_size_bytes(self) -> int:
        """Bytes one unit of this cache takes for ONE layer: a block for paged specs, a
        request slot for per-request state."""
        raise NotImplementedError


@dataclass(frozen=True)
class AttentionSpec(CacheSpec):
    """Paged K and V of an attention layer: ``[2, num_blocks, block_size, kv_heads, head]``."""

    block_size: int
    num_kv_heads: int
    head_size: int
    dtype_bytes: int

    def __post_init__(self) -> None:
        for name in ("block_size", "num_kv_heads", "head_size", "dtype_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def page_size_bytes(self) -> int:
        # K and V, each [block_size, num_kv_heads, head_size].
        return 2 * self.block_size * self.num_kv_heads * self.head_size * self.dtype_bytes


@dataclass(frozen=True)
class FullAttentionSpec(AttentionSpec):
    """Causal attention over the whole sequence: every block stays until the request ends."""

    kind: ClassVar[str] = "full_attention"


@dataclass(frozen=True)
class SlidingWindowSpec(AttentionSpec):
    """Causal attention over the last ``sliding_window`` tokens (the query's own included).

    A query at position ``p`` sees keys ``p - sliding_window < k <= p``, as Mistral and
    Qwen2 define it; blocks wholly before the oldest key the next query can see are freed.
    """

    kind: ClassVar[str] = "sliding_window"

    sliding_window: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sliding_window < 1:
            raise ValueError(
                f"SlidingWindowSpec.sliding_window must be >= 1, got {self.sliding_window}")


@dataclass(frozen=True)
class PerRequestStateSpec(CacheSpec):
    """A fixed-size state per running request (Mamba conv + SSM state, ...).

    ``shapes`` are the state tensors of ONE request in ONE layer (e.g. the conv state and the
    SSM state); the runner allocates each as ``[num_state_rows, *shape]``, in the model's
    dtype (``dtype_bytes`` per element) unless ``dtypes`` names another for that tensor
    (``"float32"``: an SSM state kept in full precision under a bf16 model, as
    ``mamba_ssm_cache_dtype`` asks). The footprint never grows with the sequence.
    """

    kind: ClassVar[str] = "per_request_state"
    is_paged: ClassVar[bool] = False

    shapes: tuple[tuple[int, ...], ...]
    dtype_bytes: int
    #: Per tensor of ``shapes``: a dtype name of ``STATE_DTYPE_BYTES``, or None for the
    #: model's dtype; empty: every tensor in the model's dtype. Added in plugin API 1.3.
    dtypes: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.shapes or any(not s or min(s) < 1 for s in self.shapes):
            raise ValueError(f"{type(self).__name__}.shapes must be non-empty shapes of "
                             f"positive sizes, got {self.shapes}")
        if self.dtype_bytes < 1:
            raise ValueError(
                f"{type(self).__name__}.dtype_bytes must be >= 1, got {self.dtype_bytes}")
        if self.dtypes and (len(self.dtypes) != len(self.shapes) or any(
                d is not None and d not in STATE_DTYPE_BYTES for d in self.dtypes)):
            raise ValueError(f"{type(self).__name__}.dtypes must name one dtype (one of "
                             f"{sorted(STATE_DTYPE_BYTES)}, or None) per shape, got "
                             f"{self.dtypes} for {len(self.shapes)} shapes")

    def tensor_dtypes(self) -> tuple[str | None, ...]:
        """Each state tensor's dtype name, None for the model's."""
        return self.dtypes or (None,) * len(self.shapes)

    @property
    def state_bytes(self) -> int:
        return sum(math.prod(shape) * (self.dtype_bytes if d is None else STATE_DTYPE_BYTES[d])
                   for shape, d in zip(self.shapes, self.tensor_dtypes()))

    @property
    def page_size_bytes(self) -> int:
        return self.state_bytes


#: The spec kinds the core contributes through ``llmserve_cache_specs``.
BUILTIN_CACHE_SPECS: dict[str, type[CacheSpec]] = {
    cls.kind: cls for cls in (FullAttentionSpec, SlidingWindowSpec, PerRequestStateSpec)
}


@dataclass(frozen=True)
class KVCacheConfig:
    """How the cache is laid out: what the runner allocates and the KV manager hands out.

    ``layer_specs[i]`` is the spec of the i-th caching layer (the order of
    ``ForwardContext.kv_caches``). Paged layers get ``num_blocks`` blocks each; state layers
    get ``num_state_slots`` slots, then ``num_state_snapshots`` snapshot rows, each.
    """

    layer_specs: tuple[CacheSpec, ...]
    num_blocks: int
    num_state_slots: int = 0
    num_state_snapshots: int = 0

    @property
    def num_state_rows(self) -> int:
        """Rows of each state tensor: running slots first, then snapshots."""
        return self.num_state_slots + self.num_state_snapshots

    @property
    def paged_specs(self) -> tuple[CacheSpec, ...]:
        return tuple(s for s in self.layer_specs if s.is_paged)

    @property
    def state_specs(self) -> tuple[CacheSpec, ...]:
        return tuple(s for s in self.layer_specs if not s.is_paged)

    @property
    def total_bytes(self) -> int:
        return (self.num_blocks * sum(s.page_size_bytes for s in self.paged_specs)
                + self.num_state_rows * sum(s.page_size_bytes for s in self.state_specs))


def check_layer_specs(layer_specs: list[CacheSpec], registry: dict[str, type]) -> None:
    """Raise ``ValueError`` unless every spec is of a registered kind and all paged specs
    share one block size (they share block ids)."""
    for i, spec in enumerate(layer_specs):
        cls = registry.get(spec.kind)
        if cls is None or not isinstance(spec, cls):
            raise ValueError(
                f"layer {i} asks for a {type(spec).__name__} cache (kind {spec.kind!r}), which "
                f"no installed plugin provides; installed cache kinds: {sorted(registry)}")
    sizes = {s.block_size for s in layer_specs if s.is_paged}
    if len(sizes) > 1:
        raise ValueError(f"paged layers disagree on block_size: {sorted(sizes)}")


def plan_kv_cache(layer_specs: list[CacheSpec], budget_bytes: int, max_num_seqs: int,
                  num_blocks_override: int | None = None,
                  state_snapshots: bool = False) -> KVCacheConfig:
    """Split ``budget_bytes``: ``max_num_seqs`` state slots first (and as many snapshot rows
    with ``state_snapshots``, for prefix caching), paged blocks get the rest.

    All paged layers share block ids, so one block costs the sum of their page sizes.
    ``num_blocks_override`` fixes the block count (tests, benchmarks) and skips the budget.
    """
    if not layer_specs:
        raise ValueError("the model reports no caching layer")
    paged = [s for s in layer_specs if s.is_paged]
    state = [s for s in layer_specs if not s.is_paged]
    num_slots = max_num_seqs if state else 0
    num_snapshots = num_slots if state_snapshots else 0
    state_bytes = (num_slots + num_snapshots) * sum(s.page_size_bytes for s in state)
    if not paged:
        num_blocks = 0
    elif num_blocks_override is not None:
        num_blocks = num_blocks_override
    else:
        bytes_per_block = sum(s.page_size_bytes for s in paged)
        num_blocks = (budget_bytes - state_bytes) // bytes_per_block
        if num_blocks < 1:
            raise ValueError(
                f"KV cache budget of {budget_bytes} bytes is too small: "
                f"{state_bytes} bytes of per-request state for {num_slots} sequences "
                f"({num_snapshots} prefix-cache snapshots), and one "
                f"block across {len(paged)} layers needs {bytes_per_block} bytes. Raise the KV "
                f"cache memory (kv_cache_memory / gpu_memory_utilization), or lower "
                f"max_num_seqs, the model or the block size.")
    if state and num_blocks_override is None and state_bytes > budget_bytes:
        raise ValueError(
            f"KV cache budget of {budget_bytes} bytes cannot hold the per-request state of "
            f"{num_slots} sequences and {num_snapshots} prefix-cache snapshots "
            f"({state_bytes} bytes); lower max_num_seqs, disable prefix caching or raise the "
            f"KV cache memory")
    return KVCacheConfig(tuple(layer_specs), num_blocks, num_slots, num_snapshots)
