"""Per-request state the model runner keeps between steps, in preallocated host arrays.

A request is written in full once, when it is first scheduled; afterwards each step only
appends its sampled token and any new block ids. Building a step's flat inputs is then a few
vectorised numpy gathers over the scheduled rows, whatever the requests' lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from llmserve.sample.metadata import SamplingArrays
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import NewRequestData


#: Token id standing for a sampled token that has not reached the host yet.
PLACEHOLDER = -1


class InputBatch:
    def __init__(self, max_num_reqs: int, max_model_len: int, block_size: int) -> None:
        self.max_model_len = max_model_len
        max_blocks = -(-max_model_len // block_size)
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int64)
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_prompt_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_computed = np.zeros(max_num_reqs, dtype=np.int64)
        #: Per row, the tokens rolled back after verifications (rejected drafts), counted
        #: since the start: a step launched before a verification resolved reads how far its
        #: placeholders moved as the difference (asynchronous scheduling).
        self.num_rolled_back = np.zeros(max_num_reqs, dtype=np.int64)
        self.block_table = np.zeros((max_num_reqs, max_blocks), dtype=np.int64)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int64)
        #: Each row's slot in the per-request state layers (-1: none).
        self.state_slot = np.full(max_num_reqs, -1, dtype=np.int64)
        #: Numeric sampling settings per row, gathered for the sampler without touching
        #: each request's SamplingParams.
        int_fields = ("top_k", "features")
        self.sampling = {name: np.zeros(max_num_reqs,
                                        dtype=np.int64 if name in int_fields else np.float64)
                         for name in SamplingArrays.FIELDS}
        #: Rows whose request asked for prompt logprobs (checked vectorised every step).
        self.wants_prompt_logprobs = np.zeros(max_num_reqs, dtype=bool)
        self.params: list[Optional[SamplingParams]] = [None] * max_num_reqs
        self.stop_token_ids: list[frozenset[int]] = [frozenset()] * max_num_reqs
        self.row_of: dict[str, int] = {}
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))
        #: Seeded generators by request id; they survive preemption so a resumed request
        #: continues the same random stream.
        self.generators: dict[str, torch.Generator] = {}

    def add(self, req: NewRequestData, device: torch.device) -> int:
        if req.req_id in self.row_of:  # resumed after preemption: rebuild the row
            self.remove(req.req_id, keep_generator=True)
        row = self._free_rows.pop()
        self.row_of[req.req_id] = row
        n = len(req.token_ids)
        self.token_ids[row, :n] = req.token_ids
        self.num_tokens[row] = n
        self.num_prompt_tokens[row] = req.num_prompt_tokens
        self.num_computed[row] = req.num_computed_tokens
        nb = len(req.block_ids)
        self.block_table[row, :nb] = req.block_ids
        self.num_blocks[row] = nb
        self.state_slot[row] = -1 if req.state_slot is None else req.state_slot
        self.params[row] = req.sampling_params
        self.stop_token_ids[row] = req.stop_token_ids
        self.wants_prompt_logprobs[row] = req.sampling_params.prompt_logprobs is not None
        settings = SamplingArrays.from_params([req.sampling_params])
        for name, values in self.sampling.items():
            values[row] = getattr(settings, name)[0]
        seed = req.sampling_params.seed
        if seed is not None and req.req_id not in self.generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed % (2**64))
            self.generators[req.req_id] = gen
        return row

    def append_blocks(self, req_id: str, block_ids: list[int]) -> None:
        if block_ids:
            row = self.row_of[req_id]
            nb = self.num_blocks[row]
            self.block_table[row, nb:nb + len(block_ids)] = block_ids
            self.num_blocks[row] = nb + len(block_ids)

    def remove(self, req_id: str, keep_generator: bool = False) -> None:
        row = self.row_of.pop(req_id, None)
        if not keep_generator:
            self.generators.pop(req_id, None)
        if row is None:
            return
        self.params[row] = None
        self.wants_prompt_logprobs[row] = False
        self._free_rows.append(row)

    def reserve_tokens(self, rows: np.ndarray, counts: Optional[np.ndarray] = None) -> np.ndarray:
        """Append placeholders to each of ``rows`` for the tokens sampled this step (one, or
        ``counts``: a verification's drafts + 1, as if all were accepted); returns the first
        positions, for ``fill_tokens`` once the tokens reach the host."""
        n = self.num_tokens[rows]
        if counts is None:
            room = n < self.max_model_len
            self.token_ids[rows[room], n[room]] = PLACEHOLDER
            self.num_tokens[rows] = n + 1
            return n
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.repeat(n, counts) + offsets
        room = positions < self.max_model_len
        self.token_ids[np.repeat(rows, counts)[room], positions[room]] = PLACEHOLDER
        self.num_tokens[rows] = n + counts
        return n

    def accept(self, row: int, position: int, tokens: np.ndarray, reserved: int) -> None:
        """A verification's emitted ``tokens`` replace the ``reserved`` placeholders at
        ``position``; the rejected rest is rolled back: the known and computed tokens shrink
        and the placeholders of steps launched since move down."""
        n = len(tokens)
        self.token_ids[row, position:position + n] = tokens[:self.max_model_len - position]
        rejected = reserved - n
        if rejected:
            total = int(self.num_tokens[row]) - rejected
            self.token_ids[row, position + n:total] = PLACEHOLDER
            self.num_tokens[row] = total
            self.num_computed[row] -= rejected
            self.num_rolled_back[row] += rejected

    def fill_tokens(self, rows: np.ndarray, positions: np.ndarray, tokens: np.ndarray) -> None:
        room = positions < self.max_model_len
        self.token_ids[rows[room], positions[room]] = tokens[room]

    def sampling_arrays(self, rows: np.ndarray) -> SamplingArrays:
        return SamplingArrays(**{name: values[rows] for name, values in self.sampling.items()})

    def prompt_rows(self, rows: np.ndarray) -> "TokenRows":
        return TokenRows(self.token_ids, rows, np.zeros_like(rows), self.num_prompt_tokens[rows])

    def output_rows(self, rows: np.ndarray) -> "TokenRows":
        return TokenRows(self.token_ids, rows, self.num_prompt_tokens[rows],
                         self.num_tokens[rows])


class TokenRows(Sequence):
    """Token-id slices of some rows, copied out only when read.

    Penalties, min_tokens and logits processors read a request's prompt or output tokens, and
    most steps nobody does: slicing every row every step would cost more than the rest of
    input preparation. The bounds are captured when the view is made.
    """

    def __init__(self, token_ids: np.ndarray, rows: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray) -> None:
        self._token_ids, self._rows, self._starts, self._ends = token_ids, rows, starts, ends

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        return self._token_ids[self._rows[i], self._starts[i]:self._ends[i]].tolist()
