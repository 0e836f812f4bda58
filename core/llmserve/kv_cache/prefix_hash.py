"""Prefix-cache keys of full KV blocks.

The key of full block ``i`` is ``H(key of block i-1, token ids of block i, extra keys)``.
Chaining through the parent makes a key name the whole prefix up to the end of its block, so
equal keys mean equal K/V (for the same model and weights) and a lookup walks keys from the
first block until the first miss. Extra keys separate prefixes that must not share K/V even
with equal tokens: the request's ``cache_salt`` (tenant isolation) on the first block, and, as
the chain carries it on, every later block too. Per-block extras such as adapter names or
multimodal input hashes would be added in ``block_extra_keys``.

Why SHA-256 by default: a key collision hands one request another prefix's K/V, silently
corrupting its output, and across tenants it leaks information. Python's ``hash`` of a tuple of
ints is not salted (only str/bytes are) and is a 64-bit non-cryptographic mix, so colliding
prompts can be constructed on purpose. SHA-256 over a compact, length-prefixed byte encoding
costs about a microsecond per 16-token block, paid once per full block (hashing is
incremental), which is noise next to the forward pass. ``builtin_block_hash`` is kept for
trusted single-tenant benchmarking where even that matters.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from array import array
from collections.abc import Callable, Sequence
from typing import Any

BlockHash = Any
BlockHashFn = Callable[[BlockHash | None, Sequence[int], tuple | None], BlockHash]

_ROOT = b"\x00" * 32


def sha256_block_hash(
    parent: bytes | None, token_ids: Sequence[int], extra_keys: tuple | None = None
) -> bytes:
    """32-byte SHA-256 digest of (parent digest, token ids, extra keys); collision resistant."""
    h = hashlib.sha256(_ROOT if parent is None else parent)
    h.update(struct.pack("<I", len(token_ids)))
    h.update(array("q", token_ids).tobytes())
    if extra_keys:
        h.update(pickle.dumps(extra_keys, protocol=4))
    return h.digest()


def builtin_block_hash(
    parent: int | None, token_ids: Sequence[int], extra_keys: tuple | None = None
) -> int:
    """Python's tuple hash: fastest, valid within one process, NOT collision resistant."""
    return hash((parent, tuple(token_ids), extra_keys))


BLOCK_HASH_FUNCTIONS: dict[str, BlockHashFn] = {
    "sha256": sha256_block_hash,
    "builtin": builtin_block_hash,
}


def block_extra_keys(request: Any, block_index: int) -> tuple | None:
    """Extra key material of one block of ``request`` (None when there is none)."""
    if block_index == 0 and request.cache_salt is not None:
        return ("salt", request.cache_salt)
    return None


def update_block_hashes(
    request: Any, block_size: int, hash_fn: BlockHashFn = sha256_block_hash
) -> list[BlockHash]:
    """Extend ``request.block_hashes`` to cover every full block of ``request.all_token_ids``.

    Only blocks not yet hashed are hashed, so a decoding request costs one hash per
    ``block_size`` tokens. Returns ``request.block_hashes``.
    """
    hashes = request.block_hashes
    tokens = request.all_token_ids
    num_full = len(tokens) // block_size
    i = len(hashes)
    if i >= num_full:
        return hashes
    parent = hashes[i - 1] if i else None
    while i < num_full:
        start = i * block_size
        parent = hash_fn(parent, tokens[start:start + block_size], block_extra_keys(request, i))
        hashes.append(parent)
        i += 1
    return hashes
