"""``{"method": "draft_model", "model": DIR}``: a smaller model with the target's vocabulary
drafts greedily.

The draft keeps its own paged KV cache in the engine's blocks, under the target's block
tables: position ``p`` of a request sits in the same slot for both models. Each proposal
first brings the draft's cache up to the request's known tokens (one flat forward over what it
has not seen: the whole prompt the first time, then the tokens verified since), which also
drafts the first token; each further draft is one batched decode step. Rejected drafts leave
stale entries past the verified tokens, which the next catch-up overwrites.

With the embedded default model as the target and no ``model``, the draft shipped next to it
is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.models.loader import read_hf_config
from llmserve.spec_decode.proposer import ProposalBatch, Proposer, ProposerContext


def default_draft_model(target_model: str) -> str:
    """The shipped draft of the embedded default model; other targets must name theirs."""
    from llmserve import default_model

    draft = getattr(default_model, "DRAFT_MODEL_PATH", None)
    if draft is not None and Path(target_model).resolve() == Path(
            default_model.DEFAULT_MODEL_PATH).resolve():
        return str(draft)
    raise ValueError("speculative_config.model is required for method 'draft_model' (the "
                     "draft's HF directory); only the embedded default model has a shipped "
                     "draft")


class DraftModelProposer(Proposer):
    needs_lookahead = True

    def __init__(self, context: ProposerContext) -> None:
        super().__init__(context)
        self.path = context.config.model or default_draft_model(context.target_model)
        draft_vocab = int(read_hf_config(self.path)["vocab_size"])
        target_vocab = int(context.target_hf_config["vocab_size"])
        if draft_vocab != target_vocab:
            raise ValueError(f"the draft model's vocab_size ({draft_vocab}, {self.path}) must "
                             f"equal the target's ({target_vocab})")
        #: Per runner row: leading tokens whose K/V the draft holds.
        self.num_draft_computed = np.zeros(context.max_num_seqs, dtype=np.int64)
        self.model = None
        self.kv_caches: list = []

    def load(self) -> None:
        self.model = self.context.load_model(self.path)

    def cache_specs(self) -> list[CacheSpec]:
        specs = self.model.cache_specs(self.context.block_size)
        if not all(s.is_paged for s in specs):
            raise ValueError(f"draft model {self.path} has per-request state layers; only "
                             "attention-only drafts are supported")
        return specs

    def bind_kv_cache(self, caches: list) -> None:
        self.kv_caches = caches

    def add_request(self, row: int, num_computed_tokens: int) -> None:
        self.num_draft_computed[row] = num_computed_tokens

    def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
        drafts = [batch.token_ids[0, :0]] * len(batch.req_ids)
        active = np.nonzero(batch.max_drafts > 0)[0]
        if not len(active):
            return drafts
        rows = batch.rows[active]
        num_tokens = batch.num_tokens[active]
        max_drafts = batch.max_drafts[active]
        start = np.minimum(self.num_draft_computed[rows], num_tokens - 1)
        lens = num_tokens - start
        cu = np.cumsum(lens)
        seq_of_token = np.repeat(np.arange(len(rows)), lens)
        positions = start[seq_of_token] + np.arange(int(cu[-1])) - (cu - lens)[seq_of_token]
        input_ids = self.context.upload(batch.token_ids[rows[seq_of_token], positions])
        ctx = self.context
        with ctx.inference_mode():
            hidden = self._forward(batch, rows, input_ids, positions, lens, num_tokens)
            token = self.model.compute_logits(hidden[ctx.upload(cu - 1)]).argmax(dim=-1)
            self.num_draft_computed[rows] = num_tokens
            steps = [(np.arange(len(rows)), token)]
            for j in range(1, int(max_drafts.max())):
                prev_idx, prev = steps[-1]
                keep = np.nonzero(max_drafts[prev_idx] > j)[0]
                idx = prev_idx[keep]
                pos = num_tokens[idx] - 1 + j
                hidden = self._forward(batch, rows[idx], prev[ctx.upload(keep)], pos,
                                       np.ones(len(idx), dtype=np.int64), pos + 1)
                steps.append((idx, self.model.compute_logits(hidden).argmax(dim=-1)))
            host = torch.cat([t for _, t in steps]).cpu().numpy()
        table = np.full((len(rows), int(max_drafts.max())), -1, dtype=np.int64)
        offset = 0
        for j, (idx, _) in enumerate(steps):
            table[idx, j] = host[offset:offset + len(idx)]
            offset += len(idx)
        for i, a in enumerate(active.tolist()):
            drafts[a] = table[i, :max_drafts[i]]
        return drafts

    def _forward(self, batch: ProposalBatch, rows: np.ndarray, input_ids: torch.Tensor,
                 positions: np.ndarray, query_lens: np.ndarray,
                 seq_lens: np.ndarray) -> torch.Tensor:
        """The draft's hidden states over a flat batch: ``query_lens[i]`` tokens of row
        ``rows[i]`` ending at length ``seq_lens[i]``, at ``positions``."""
        ctx = self.context
        bs = ctx.block_size
        token_rows = np.repeat(rows, query_lens)
        slots = batch.block_table[token_rows, positions // bs] * bs + positions % bs
        max_blocks = int(-(-seq_lens.max() // bs))
        md = ctx.attention_metadata(query_lens, seq_lens, slots,
                                    batch.block_table[rows, :max_blocks])
        return self.model(input_ids, ctx.upload(positions), ForwardContext(md, self.kv_caches))
