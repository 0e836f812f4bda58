"""Per-request block tables over one ``BlockPool``, with automatic prefix caching, and the
per-request state slots of state layers.

The scheduler asks, per request and step, for room to compute ``num_new_tokens`` more tokens;
the manager appends blocks to the request's table (check first, then act: on failure nothing
changes) and registers each block that becomes full under its prefix hash, so later requests
with the same prefix reuse it. Requests sharing a prefix share block ids (reference counted).

What the manager does per cache kind is decided once, from the layers' specs
(``KVCacheManager.from_config``): the paged layers share one block table whose retention rule
(``llmserve.kv_cache.retention``) says which leading blocks may go back to the pool (none for
full attention, those behind the window for sliding-window attention); state layers get one
slot per running request (``StateSlotPool``), and with prefix caching, snapshots of those states
at block boundaries (``StateSnapshotCache``): a prefix hit on a model with state layers is
cut back to the longest prefix whose state was kept, and that state is copied into the
request's slot before its first step (``take_state_copies``). A freed leading block leaves a
hole in the table (``None`` here, ``NULL_BLOCK_ID`` towards the runner): positions keep their
table index, and no kernel reads behind its window.

Plain ints and lists only: no torch, so the scheduler and this can be tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmserve.kv_cache.block_pool import BlockPool, KVBlock
from llmserve.kv_cache.prefix_hash import BLOCK_HASH_FUNCTIONS, update_block_hashes
from llmserve.kv_cache.retention import FullRetention, retention_for
from llmserve.kv_cache.spec import KVCacheConfig
from llmserve.kv_cache.state_slots import StateSlotPool
from llmserve.kv_cache.state_snapshots import StateSnapshotCache

#: Block id the runner sees where a block behind the window was freed: any valid id does,
#: since nothing reads it.
NULL_BLOCK_ID = 0


@dataclass(frozen=True)
class PrefixCacheStats:
    """Cumulative prefix-cache lookups, in prompt tokens, counted once per admission."""

    queries: int
    hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class _RequestBlocks:
    __slots__ = ("blocks", "num_cached_blocks", "num_dropped")

    def __init__(self) -> None:
        #: The block table; leading entries are None once freed behind a sliding window.
        self.blocks: list[KVBlock | None] = []
        #: Leading blocks already registered in (or taken from) the prefix cache.
        self.num_cached_blocks = 0
        #: Leading blocks given back because no query will read them again.
        self.num_dropped = 0


class KVCacheManager:
    """Paged KV allocation (one block table per request) and per-request state slots."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        hash_algo: str = "sha256",
        retention: FullRetention | None = None,
        num_state_slots: int = 0,
        has_paged_layers: bool = True,
        num_state_snapshots: int = 0,
    ) -> None:
        """``retention`` is the paged layers' rule (full attention by default);
        ``num_state_slots`` > 0 adds a slot per running request for state layers; a model
        with no paged layer at all (pure state) passes ``has_paged_layers=False``. With state
        layers, prefix caching needs ``num_state_snapshots`` > 0 (rows after the slots) and is
        off without them."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if hash_algo not in BLOCK_HASH_FUNCTIONS:
            raise ValueError(f"hash_algo must be one of {sorted(BLOCK_HASH_FUNCTIONS)}, "
                             f"got {hash_algo!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.retention = retention if retention is not None else FullRetention()
        self._window = self.retention.window
        self.state_slots = StateSlotPool(num_state_slots) if num_state_slots else None
        if num_state_slots and not num_state_snapshots:
            enable_prefix_caching = False
        self.enable_prefix_caching = enable_prefix_caching
        #: Snapshots of state at block boundaries (prefix caching with state layers).
        self.snapshots = (StateSnapshotCache(num_state_snapshots, num_state_slots)
                          if num_state_slots and enable_prefix_caching else None)
        self.has_paged_layers = has_paged_layers
        self.block_pool = BlockPool(num_blocks, enable_prefix_caching and has_paged_layers)
        self._hash_fn = BLOCK_HASH_FUNCTIONS[hash_algo]
        self._reqs: dict[str, _RequestBlocks] = {}
        self._num_queries = 0
        self._num_hits = 0
        #: This step's state copies: (snapshot row, slot) restores before the forward and
        #: (slot, snapshot row) saves after it.
        self._restores: list[tuple[int, int]] = []
        self._saves: list[tuple[int, int]] = []
        #: request id -> (snapshot key, end token, row) of the save scheduled this step,
        #: cancelled if the request is preempted before the step runs.
        self._step_saves: dict[str, tuple[object, int, int]] = {}
        #: request id -> key of its latest snapshot, demoted once it takes a newer one.
        self._last_snapshot: dict[str, object] = {}
        #: request id -> (placeholder key, end token) of a snapshot written before the last
        #: token of its block was known (asynchronous decoding); keyed once that token is.
        self._unkeyed: dict[str, tuple[object, int]] = {}

    @classmethod
    def from_config(cls, kv_config: KVCacheConfig, block_size: int,
                    enable_prefix_caching: bool = True) -> "KVCacheManager":
        """The manager for a planned cache, dispatching on the layers' spec kinds.

        With state layers, prefix caching works through state snapshots, and is off when the
        plan has none.
        """
        paged = bool(kv_config.paged_specs)
        return cls(kv_config.num_blocks if paged else 1, block_size, enable_prefix_caching,
                   retention=retention_for(kv_config.paged_specs),
                   num_state_slots=kv_config.num_state_slots, has_paged_layers=paged,
                   num_state_snapshots=kv_config.num_state_snapshots)

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

    def can_ever_fit(self, num_tokens: int, max_chunk: int | None = None) -> bool:
        """Whether a sequence of ``num_tokens``, computed in chunks of at most ``max_chunk``
        tokens (default: all at once), fits in the whole cache with nothing else in it."""
        if not self.has_paged_layers:
            return True
        chunk = num_tokens if max_chunk is None else max_chunk
        return self.retention.max_blocks_at_once(num_tokens, chunk,
                                                 self.block_size) <= self.num_blocks

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a new list; empty for an unknown request)."""
        state = self._reqs.get(request_id)
        if state is None:
            return []
        return [NULL_BLOCK_ID if b is None else b.block_id for b in state.blocks]

    def get_state_slot(self, request_id: str) -> int | None:
        """The request's state slot, or None (no state layers, or not admitted)."""
        return None if self.state_slots is None else self.state_slots.get(request_id)

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
        ids = []
        if self.has_paged_layers:
            lookup = self.block_pool.cached_blocks.get
            for h in hashes[:max_hit_blocks]:
                block = lookup(h)
                if block is None:
                    break
                ids.append(block.block_id)
            num_hit = len(ids)
        else:
            num_hit = max_hit_blocks
        if self.snapshots is not None:
            # State layers: only as far as the last boundary whose state was kept.
            while num_hit and self.snapshots.lookup(hashes[num_hit - 1]) is None:
                num_hit -= 1
            del ids[num_hit:]
        return ids, num_hit * self.block_size

    # -- state snapshots ----------------------------------------------------------------

    def begin_step(self) -> None:
        """Called as each step starts being scheduled."""
        if self.snapshots is not None:
            self.snapshots.begin_step()
            self._step_saves.clear()

    def snapshot_chunk(self, num_computed_tokens: int, num_new_tokens: int) -> int:
        """``num_new_tokens`` trimmed so that a step crossing a block boundary ends on one,
        where the state can be snapshotted (no change without snapshots)."""
        if self.snapshots is None:
            return num_new_tokens
        end = num_computed_tokens + num_new_tokens
        boundary = end - end % self.block_size
        return boundary - num_computed_tokens if boundary > num_computed_tokens else num_new_tokens

    def take_state_copies(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """This step's (restores, saves) of state rows, as (source row, destination row);
        the runner copies restores before the forward and saves after it."""
        restores, saves = self._restores, self._saves
        self._restores, self._saves = [], []
        return restores, saves

    def _restore_snapshot(self, request, slot: int, num_hit_tokens: int) -> None:
        key = request.block_hashes[num_hit_tokens // self.block_size - 1]
        row = self.snapshots.lookup(key)
        if row is None:
            raise ValueError(f"no state snapshot after {num_hit_tokens} tokens of request "
                             f"{request.request_id!r}: hits come from get_computed_blocks")
        self.snapshots.touch(key)
        self._restores.append((row, slot))

    def _save_snapshot(self, request, slot: int, end: int) -> None:
        """Snapshot the request's state after token ``end`` (a block boundary) once this step
        has computed it."""
        rid, snaps = request.request_id, self.snapshots
        hashes = update_block_hashes(request, self.block_size, self._hash_fn)
        known = len(hashes) * self.block_size >= end
        key = hashes[end // self.block_size - 1] if known else ("unkeyed", rid, end)
        row = snaps.take(key)
        if row is None:
            return
        self._saves.append((slot, row))
        self._step_saves[rid] = (key, end, row)
        if not known:
            self._unkeyed[rid] = (key, end)
            return
        previous = self._last_snapshot.get(rid)
        if previous is not None:
            snaps.demote(previous)
        self._last_snapshot[rid] = key

    def _key_pending_snapshot(self, request) -> None:
        """Give a snapshot written before its block's last token was known its prefix key."""
        pending = self._unkeyed.get(request.request_id)
        if pending is None:
            return
        placeholder, end = pending
        hashes = update_block_hashes(request, self.block_size, self._hash_fn)
        if len(hashes) * self.block_size < end:
            return
        del self._unkeyed[request.request_id]
        key = hashes[end // self.block_size - 1]
        self.snapshots.rekey(placeholder, key)
        previous = self._last_snapshot.get(request.request_id)
        if previous is not None:
            self.snapshots.demote(previous)
        self._last_snapshot[request.request_id] = key

    # -- actions ------------------------------------------------------------------------

    def allocate_slots(
        self,
        request,
        num_new_tokens: int,
        new_computed_block_ids: Sequence[int] = (),
        num_new_computed_tokens: int | None = None,
        num_lookahead_tokens: int = 0,
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens after ``request.num_computed_tokens``.

        ``new_computed_block_ids`` and ``num_new_computed_tokens`` are a prefix hit from
        ``get_computed_blocks`` (only for a request that holds no blocks yet); those tokens
        count as computed before the new ones (a model without paged layers hits tokens but
        no blocks). Returns the block ids appended to the request's table (hits first, then
        fresh blocks), or None when the free blocks do not suffice, in which case nothing
        changed. Blocks that become full once these tokens are computed are registered in the
        prefix cache right away (the step computing them runs before any later lookup reads
        them); with state snapshots, so is the state where the step ends on a block boundary.
        ``num_lookahead_tokens`` more slots are allocated past them, not computed (a draft
        model's own decode steps in speculative decoding).
        """
        if num_new_computed_tokens is None:
            num_new_computed_tokens = len(new_computed_block_ids) * self.block_size
        if self._unkeyed:
            self._key_pending_snapshot(request)
        if not self.has_paged_layers:
            return self._allocate_state_only(request, num_new_tokens, num_new_computed_tokens)
        bs = self.block_size
        rid = request.request_id
        state = self._reqs.get(rid)
        end = request.num_computed_tokens + len(new_computed_block_ids) * bs + num_new_tokens
        alloc_end = end + num_lookahead_tokens
        num_held = 0 if state is None else len(state.blocks)
        caching = self.enable_prefix_caching
        num_tokens = len(request.all_token_ids)

        if state is not None and self._window is not None:
            self._drop_unneeded(state, request.num_computed_tokens)

        # Fast path: a decode step inside the last block, no block filled up.
        if (state is not None and not new_computed_block_ids and alloc_end <= num_held * bs
                and (not caching or min(end, num_tokens) // bs <= state.num_cached_blocks)
                and (self.snapshots is None or end % bs)):
            return []

        pool = self.block_pool
        hits = [pool.blocks[i] for i in new_computed_block_ids]
        if hits and (num_held or request.num_computed_tokens):
            raise ValueError(f"prefix hits given for request {rid!r}, which already has "
                             f"blocks or computed tokens")
        num_new_blocks = max(0, -(-alloc_end // bs) - num_held - len(hits))
        # Free cached hit blocks sit in the free queue; claiming them shrinks it.
        num_revived = sum(1 for b in hits if b.ref_cnt == 0)
        if num_new_blocks + num_revived > pool.num_free_blocks:
            return None
        slots = self.state_slots
        if slots is not None and not slots.can_allocate(rid):
            return None

        if state is None:
            if slots is not None:
                slot = slots.allocate(rid)
                if hits and self.snapshots is not None:
                    self._restore_snapshot(request, slot, len(hits) * bs)
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
        if self._window is not None and hits:
            # Hit blocks behind the window of the first token to compute go straight back.
            self._drop_unneeded(state, request.num_computed_tokens + len(hits) * bs)

        if caching:
            num_full = min(end, num_tokens) // bs
            if num_full > state.num_cached_blocks:
                hashes = update_block_hashes(request, bs, self._hash_fn)
                pool.cache_full_blocks(state.blocks, hashes, state.num_cached_blocks, num_full)
                state.num_cached_blocks = num_full
        if self.snapshots is not None and end % bs == 0 and num_new_tokens:
            self._save_snapshot(request, slots.get(rid), end)
        if hits:
            return [b.block_id for b in hits] + [b.block_id for b in new_blocks]
        return [b.block_id for b in new_blocks]

    def free(self, request) -> None:
        """Return the request's blocks to the pool, tail first (evicted before the head).

        Blocks this request registered for tokens it has not computed (it was scheduled, then
        preempted before the step ran, with ``num_computed_tokens`` rolled back) lose their
        hash first: their K/V were never written. Unknown requests are ignored.
        """
        if self.state_slots is not None:
            self.state_slots.free(request.request_id)
        if self.snapshots is not None:
            self._forget_snapshots(request)
        state = self._reqs.pop(request.request_id, None)
        if state is None:
            return
        blocks = state.blocks
        pool = self.block_pool
        for i in range(max(request.num_computed_tokens // self.block_size, state.num_dropped),
                       state.num_cached_blocks):
            if blocks[i].ref_cnt == 1:
                pool.uncache_block(blocks[i])
        pool.free_blocks(reversed(blocks[state.num_dropped:]))

    def _forget_snapshots(self, request) -> None:
        """The request leaves the running set: cancel the save this step scheduled for it if
        the step will not compute it (preempted while scheduling), and stop tracking it."""
        rid = request.request_id
        self._key_pending_snapshot(request)
        scheduled = self._step_saves.pop(rid, None)
        if scheduled is not None and request.num_computed_tokens < scheduled[1]:
            key, _, row = scheduled
            self.snapshots.discard(key)
            self._saves = [copy for copy in self._saves if copy[1] != row]
        pending = self._unkeyed.pop(rid, None)
        if pending is not None:
            self.snapshots.discard(pending[0])
        self._last_snapshot.pop(rid, None)

    def _allocate_state_only(self, request, num_new_tokens: int,
                             num_hit_tokens: int) -> list[int] | None:
        rid = request.request_id
        slots = self.state_slots
        if slots is None or not slots.can_allocate(rid):
            return None
        is_new = slots.get(rid) is None
        slot = slots.allocate(rid)
        if is_new and self.enable_prefix_caching \
                and request.sampling_params.prompt_logprobs is None:
            self._num_queries += len(request.all_token_ids)
            self._num_hits += num_hit_tokens
            if num_hit_tokens:
                self._restore_snapshot(request, slot, num_hit_tokens)
        end = request.num_computed_tokens + num_hit_tokens + num_new_tokens
        if self.snapshots is not None and end % self.block_size == 0 and num_new_tokens:
            self._save_snapshot(request, slot, end)
        return []

    def _drop_unneeded(self, state: _RequestBlocks, num_computed_tokens: int) -> None:
        """Give back the leading blocks the retention rule no longer needs. Always safe:
        ``num_computed_tokens`` only grows while the request holds blocks."""
        first_needed = min(self.retention.num_unneeded_blocks(num_computed_tokens,
                                                              self.block_size),
                           len(state.blocks))
        if first_needed <= state.num_dropped:
            return
        blocks = state.blocks
        dropped = blocks[state.num_dropped:first_needed]
        blocks[state.num_dropped:first_needed] = [None] * len(dropped)
        state.num_dropped = first_needed
        # Chain tails first, as in free(): the head of a prefix stays cached longest.
        self.block_pool.free_blocks(reversed(dropped))

    def reset_prefix_cache(self) -> bool:
        """Forget all cached prefixes; blocks in use stay with their requests."""
        if self.snapshots is not None:
            self.snapshots.clear()
            self._last_snapshot.clear()
            self._unkeyed.clear()
            self._step_saves.clear()
        return self.block_pool.reset_prefix_cache()
