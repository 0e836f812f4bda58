"""Per-request block tables over one ``BlockPool``, with automatic prefix caching.

The scheduler asks, per request and step, for room to compute ``num_new_tokens`` more tokens;
the manager appends blocks to the request's table (check first, then act: on failure nothing
changes) and registers each block that becomes full under its prefix hash, so later requests
with the same prefix reuse it. Requests sharing a prefix share block ids (reference counted).

Plain ints and lists only: no torch, so the scheduler and this can be tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmserve.kv_cache.block_pool import BlockPool, KVBlock
from llmserve.kv_cache.spec import KVCacheConfig
from llmserve.kv_cache.prefix_hash import BLOCK_HASH_FUNCTIONS, update_block_hashes


@dataclass(frozen=True)
class PrefixCacheStats:
    """Cumulative prefix-cache lookups, in prompt tokens, counted once per admission."""

    queries: int
    hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class _RequestBlocks:
    __slots__ = ("blocks", "num_cached_blocks")

    def __init__(self) -> None:
        self.blocks: list[KVBlock] = []
        #: Leading blocks already registered in (or taken from) the prefix cache.
        self.num_cached_blocks = 0


class KVCacheManager:
    """Paged KV allocation for full-attention layers (one block table per request)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        hash_algo: str = "sha256",
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if hash_algo not in BLOCK_HASH_FUNCTIONS:
            raise ValueError(f"hash_algo must be one of {sorted(BLOCK_HASH_FUNCTIONS)}, "
                             f"got {hash_algo!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.block_pool = BlockPool(num_blocks, enable_prefix_caching)
        self._hash_fn = BLOCK_HASH_FUNCTIONS[hash_algo]
        self._reqs: dict[str, _RequestBlocks] = {}
        self._num_queries = 0
        self._num_hits = 0

    @classmethod
    def from_config(cls, kv_config: KVCacheConfig,
                    enable_prefix_caching: bool = True) -> "KVCacheManager":
        return cls(kv_config.num_blocks, kv_config.block_size, enable_prefix_caching)

    # -- queries ------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of KV blocks held by requests (evictable cached blocks count as free)."""
        return self.block_pool.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._num_queries, self._num_hits)

    def can_ever_fit(self, num_tokens: int) -> bool:
        """Whether a sequence of ``num_tokens`` fits in the whole cache with nothing else in it."""
        return -(-num_tokens // self.block_size) <= self.num_blocks

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a new list; empty for an unknown request)."""
        state = self._reqs.get(request_id)
        return [] if state is None else [b.block_id for b in state.blocks]

    def get_computed_blocks(self, request) -> tuple[list[int], int]:
        """Longest chain of cached full blocks that prefix ``request``'s tokens.

        Returns (block ids, number of tokens they hold). Only blocks lying entirely within the
        first ``num_tokens - 1`` tokens count, so at least the last token is computed again
        and produces the logits to sample from. No hits without prefix caching, or when the
        request wants prompt logprobs (those need every prompt position computed). Looks only;
        the hit blocks are claimed by passing them to ``allocate_slots``.
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        hashes = update_block_hashes(request, self.block_size, self._hash_fn)
        max_hit_blocks = (len(request.all_token_ids) - 1) // self.block_size
        lookup = self.block_pool.cached_blocks.get
        ids = []
        for h in hashes[:max_hit_blocks]:
            block = lookup(h)
            if block is None:
                break
            ids.append(block.block_id)
        return ids, len(ids) * self.block_size

    # -- actions ------------------------------------------------------------------------

    def allocate_slots(
        self,
        request,
        num_new_tokens: int,
        new_computed_block_ids: Sequence[int] = (),
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens after ``request.num_computed_tokens``.

        ``new_computed_block_ids`` are prefix hits from ``get_computed_blocks`` (only for a
        request that holds no blocks yet); they count as computed before the new tokens.
        Returns the block ids appended to the request's table (hits first, then fresh
        blocks), or None when the free blocks do not suffice, in which case nothing changed.
        Blocks that become full once these tokens are computed are registered in the prefix
        cache right away (the step computing them runs before any later lookup reads them).
        """
        bs = self.block_size
        rid = request.request_id
        state = self._reqs.get(rid)
        end = request.num_computed_tokens + len(new_computed_block_ids) * bs + num_new_tokens
        num_held = 0 if state is None else len(state.blocks)
        caching = self.enable_prefix_caching
        num_tokens = len(request.all_token_ids)

        # Fast path: a decode step inside the last block, no block filled up.
        if (state is not None and not new_computed_block_ids and end <= num_held * bs
                and (not caching or min(end, num_tokens) // bs <= state.num_cached_blocks)):
            return []

        pool = self.block_pool
        hits = [pool.blocks[i] for i in new_computed_block_ids]
        if hits and (num_held or request.num_computed_tokens):
            raise ValueError(f"prefix hits given for request {rid!r}, which already has "
                             f"blocks or computed tokens")
        num_new_blocks = max(0, -(-end // bs) - num_held - len(hits))
        # Free cached hit blocks sit in the free queue; claiming them shrinks it.
        num_revived = sum(1 for b in hits if b.ref_cnt == 0)
        if num_new_blocks + num_revived > pool.num_free_blocks:
            return None

        if state is None:
            state = self._reqs[rid] = _RequestBlocks()
            if caching and request.sampling_params.prompt_logprobs is None:
                self._num_queries += num_tokens
                self._num_hits += len(hits) * bs
        if hits:
            pool.touch(hits)
            state.blocks.extend(hits)
            state.num_cached_blocks = len(hits)
        new_blocks = pool.get_new_blocks(num_new_blocks) if num_new_blocks else []
        state.blocks.extend(new_blocks)

        if caching:
            num_full = min(end, num_tokens) // bs
            if num_full > state.num_cached_blocks:
                hashes = update_block_hashes(request, bs, self._hash_fn)
                pool.cache_full_blocks(state.blocks, hashes, state.num_cached_blocks, num_full)
                state.num_cached_blocks = num_full
        if hits:
            return [b.block_id for b in hits] + [b.block_id for b in new_blocks]
        return [b.block_id for b in new_blocks]

    def free(self, request) -> None:
        """Return the request's blocks to the pool, tail first (evicted before the head).

        Blocks this request registered for tokens it has not computed (it was scheduled, then
        preempted before the step ran, with ``num_computed_tokens`` rolled back) lose their
        hash first: their K/V were never written. Unknown requests are ignored.
        """
        state = self._reqs.pop(request.request_id, None)
        if state is None:
            return
        blocks = state.blocks
        pool = self.block_pool
        for i in range(request.num_computed_tokens // self.block_size, state.num_cached_blocks):
            if blocks[i].ref_cnt == 1:
                pool.uncache_block(blocks[i])
        pool.free_blocks(reversed(blocks))

    def reset_prefix_cache(self) -> bool:
        """Forget all cached prefixes; blocks in use stay with their requests."""
        return self.block_pool.reset_prefix_cache()
