"""Vocabulary-parallel token embedding and LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.distributed.parallel_state import (all_gather_last_dim, all_reduce, get_tp_rank,
                                                 get_tp_world_size)


class VocabParallelEmbedding(nn.Module):
    """Rank r holds rows [r*V/tp, (r+1)*V/tp) of the table (vocab padded to divide evenly)."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.vocab_size = vocab_size
        self.tp_size = get_tp_world_size()
        self.tp_rank = get_tp_rank()
        self.rows = -(-vocab_size // self.tp_size)
        self.start = self.tp_rank * self.rows
        self.weight = nn.Parameter(torch.empty(self.rows, hidden_size, dtype=dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        n = max(0, min(self.rows, loaded.shape[0] - self.start))
        param.data.zero_()
        param.data[:n].copy_(loaded[self.start:self.start + n])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        mask = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection, sharded like the embedding; ``tie`` shares the embedding table."""

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = all_gather_last_dim(F.linear(hidden, self.weight))
        return logits[..., :self.vocab_size]
