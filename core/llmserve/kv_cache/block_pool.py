"""Physical KV blocks, their free list, and the prefix-cache map from block hash to block.

A block is in exactly one of three states:

* in use: ``ref_cnt > 0``, owned by one or more requests (shared prefix blocks have several);
* free and cached: ``ref_cnt == 0`` with a ``block_hash``: its K/V still hold a full block of
  some prefix, so a later request may revive it; it waits in the free queue for eviction;
* free and empty: ``ref_cnt == 0``, no hash: reusable at once.

The free queue is the eviction order: ``get_new_blocks`` pops from the front. Freed cached blocks
go to the back (least recently freed is evicted first), freed empty blocks to the front (they
hold nothing worth keeping, so they are reused before any cached block is evicted).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class KVBlock:
    """One physical block: ``block_size`` token slots in every attention layer."""

    __slots__ = ("block_hash", "block_id", "next_free", "prev_free", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        #: Prefix-cache key of the full block this holds, or None.
        self.block_hash: Any = None
        #: Intrusive links of the free queue; both None while the block is not in it.
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None

    def __repr__(self) -> str:
        cached = "" if self.block_hash is None else ", cached"
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}{cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks threaded through the blocks themselves.

    Why not a ``collections.deque``: a prefix-cache hit revives a free cached block that sits
    anywhere in the queue, and it must leave the queue at once. ``deque.remove`` is O(n) (a
    scan), which at tens of thousands of blocks costs milliseconds per hit. With the links
    stored on the block, removal from the middle is O(1) and needs no allocation; popleft and
    append stay O(1) too. Two sentinel nodes remove every empty/end special case.
    """

    __slots__ = ("_head", "_len", "_tail")

    def __init__(self, blocks: Iterable[KVBlock] = ()) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def popleft(self) -> KVBlock:
        """Remove and return the first (next to evict) block."""
        block = self._head.next_free
        if block is self._tail:
            raise IndexError("popleft from an empty FreeBlockQueue")
        self.remove(block)  # type: ignore[arg-type]
        return block  # type: ignore[return-value]

    def remove(self, block: KVBlock) -> None:
        """Unlink ``block`` from wherever it sits in the queue."""
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise ValueError(f"{block!r} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1

    def append(self, block: KVBlock) -> None:
        """Put ``block`` at the back: evicted after everything already queued."""
        last = self._tail.prev_free
        last.next_free = block  # type: ignore[union-attr]
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self._len += 1

    def appendleft(self, block: KVBlock) -> None:
        """Put ``block`` at the front: reused before anything else."""
        first = self._head.next_free
        first.prev_free = block  # type: ignore[union-attr]
        block.next_free = first
        block.prev_free = self._head
        self._head.next_free = block
        self._len += 1

    def __iter__(self):
        node = self._head.next_free
        while node is not self._tail:
            yield node
            node = node.next_free  # type: ignore[union-attr]

    def block_ids(self) -> list[int]:
        """Block ids front (next evicted) to back; O(n), for tests and debugging."""
        return [b.block_id for b in self]


class BlockPool:
    """All KV blocks of one cache, their reference counts and the prefix-cache map."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        #: Prefix-cache map: block hash -> the block holding that full block's K/V. One block
        #: per hash: a second request that computes the same block keeps its copy uncached.
        self.cached_blocks: dict[Any, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks allocatable now (free empty blocks plus evictable cached ones)."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (0.0 to 1.0); evictable cached blocks count free."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def get_new_blocks(self, num_blocks: int) -> list[KVBlock]:
        """Take ``num_blocks`` blocks from the front of the free queue, evicting cached ones.

        Raises ValueError if fewer are free (callers check ``num_free_blocks`` first).
        """
        if num_blocks > len(self.free_queue):
            raise ValueError(f"cannot allocate {num_blocks} blocks, {len(self.free_queue)} free")
        popleft = self.free_queue.popleft
        cached = self.cached_blocks
        out = []
        for _ in range(num_blocks):
            block = popleft()
            if block.block_hash is not None:
                # Evict: the K/V are about to be overwritten.
                if cached.get(block.block_hash) is block:
                    del cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def get_cached_block(self, block_hash: Any) -> KVBlock | None:
        """The block caching ``block_hash``, in use or free, or None."""
        return self.cached_blocks.get(block_hash)

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on (prefix-hit) blocks, reviving free ones out of the free queue."""
        remove = self.free_queue.remove
        for block in blocks:
            if block.ref_cnt == 0:
                remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block; pass them in the order they should be evicted.

        Blocks whose count reaches 0 become free: cached ones go to the back of the queue in
        the given order, empty ones to the front.
        """
        queue = self.free_queue
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    queue.appendleft(block)
                else:
                    queue.append(block)
            elif block.ref_cnt < 0:
                raise RuntimeError(f"{block!r} freed more often than allocated")

    def cache_full_blocks(
        self,
        blocks: list[KVBlock],
        block_hashes: list[Any],
        num_cached_blocks: int,
        num_full_blocks: int,
    ) -> None:
        """Register ``blocks[num_cached_blocks:num_full_blocks]`` under their hashes.

        ``block_hashes[i]`` is the key of ``blocks[i]``. A block already cached (a prefix hit)
        keeps its key; a hash already owned by another block is left to that block.
        """
        if not self.enable_caching:
            return
        cached = self.cached_blocks
        for i in range(num_cached_blocks, num_full_blocks):
            block = blocks[i]
            if block.block_hash is not None:
                continue
            h = block_hashes[i]
            if h in cached:
                continue
            block.block_hash = h
            cached[h] = block

    def uncache_block(self, block: KVBlock) -> None:
        """Forget ``block``'s hash (its K/V are not valid for it, or the cache is reset)."""
        h = block.block_hash
        if h is None:
            return
        if self.cached_blocks.get(h) is block:
            del self.cached_blocks[h]
        block.block_hash = None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block hash (e.g. after a weight update). Always succeeds.

        Blocks in use keep their K/V and their owners; they just can no longer be hit. Free
        blocks lose nothing but their hash (their order in the free queue stays). Returns
        True, for parity with vLLM's API, which may refuse.
        """
        for block in self.cached_blocks.values():
            block.block_hash = None
        self.cached_blocks.clear()
        return True
