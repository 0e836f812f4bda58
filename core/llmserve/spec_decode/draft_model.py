"""``{"method": "draft_model", "model": DIR}``: a smaller model with the target's vocabulary
drafts greedily.

The draft keeps its own paged KV cache in the engine's blocks, under the target's block
tables: position ``p`` of a request sits in the same slot for both models. Each proposal
first brings the draft's cache up to the request's known tokens (one flat forward over what it
has not seen: the whole prompt the first time, then the tokens verified since), which also
drafts the first token; each further draft is one batched decode step. Rejected drafts leave
stale entries past the verified tokens, which the next catch-up overwrites.

Where the runner records graphs, a proposal whose catch-up is at most ``k + 1`` tokens per
request (every one after the first) replays one recorded graph: the catch-up laid out
``k + 1`` columns per request as the target's verification is, then the ``k - 1`` decode
steps, each feeding the previous step's argmax on the device.

With the embedded default model as the target and no ``model``, the draft shipped next to it
is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from llmserve.attention.backend import AttentionMetadata, ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.models.loader import read_hf_config
from llmserve.spec_decode.proposer import (GraphCapture, PendingProposalBatch, ProposalBatch,
                                           Proposer, ProposerContext)
from llmserve.spec_decode.recorded import RecordedDrafting


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


def flat_batch_metadata(ctx: ProposerContext, batch: ProposalBatch, rows: np.ndarray,
                        positions: np.ndarray, query_lens: np.ndarray,
                        seq_lens: np.ndarray) -> AttentionMetadata:
    """Attention metadata of a proposer's flat batch under the target's block tables:
    ``query_lens[i]`` tokens of row ``rows[i]`` ending at length ``seq_lens[i]``."""
    bs = ctx.block_size
    token_rows = np.repeat(rows, query_lens)
    slots = batch.block_table[token_rows, positions // bs] * bs + positions % bs
    max_blocks = int(-(-seq_lens.max() // bs))
    return ctx.attention_metadata(query_lens, seq_lens, slots,
                                  batch.block_table[rows, :max_blocks])


def place_drafts(drafts: list, active: np.ndarray, step_rows: list[np.ndarray],
                 host: np.ndarray, max_drafts: np.ndarray) -> list:
    """Put greedy drafting's tokens in each request's place: step ``j`` drafted for the
    ``active`` positions ``step_rows[j]``, its tokens are the next ``len(step_rows[j])`` of
    ``host``; request ``active[i]`` keeps its first ``max_drafts[i]``."""
    table = np.full((len(active), len(step_rows)), -1, dtype=np.int64)
    offset = 0
    for j, idx in enumerate(step_rows):
        table[idx, j] = host[offset:offset + len(idx)]
        offset += len(idx)
    for i, a in enumerate(active.tolist()):
        drafts[a] = table[i, :max_drafts[i]]
    return drafts


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
        self.recorded: Optional[RecordedDrafting] = None

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

    def warm_up(self, graphs: Optional[GraphCapture]) -> None:
        if graphs is not None and self.k > 1:
            self.recorded = RecordedDrafting(self, graphs)

    def draft_step(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   fctx: ForwardContext, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids, positions, fctx)
        return hidden, hidden

    def draft_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden).argmax(dim=-1)

    def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
        drafts = [batch.token_ids[0, :0]] * len(batch.req_ids)
        active = np.nonzero(batch.max_drafts > 0)[0]
        if not len(active):
            return drafts
        rows = batch.rows[active]
        num_tokens = batch.num_tokens[active]
        max_drafts = batch.max_drafts[active]
        start = np.minimum(self.num_draft_computed[rows], num_tokens - 1)
        recorded = self.recorded
        if recorded is not None and len(rows) <= recorded.sizes[-1]:
            # A longer catch-up (a new prompt) runs eagerly up to its last k + 1 tokens,
            # which the recorded proposal takes.
            long = np.nonzero(num_tokens - start > recorded.q)[0]
            if len(long):
                cut = num_tokens[long] - recorded.q
                self._catch_up(batch, rows[long], start[long], cut)
                start[long] = cut
            table = recorded.replay(batch, rows, start, num_tokens - start, max_drafts)
            self.num_draft_computed[rows] = num_tokens
            for i, a in enumerate(active.tolist()):
                drafts[a] = table[i, :max_drafts[i]]
            return drafts
        lens = num_tokens - start
        cu = np.cumsum(lens)
        input_ids, positions = self._tokens(batch, rows, start, lens)
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
        return place_drafts(drafts, active, [idx for idx, _ in steps], host, max_drafts)

    def propose_pending(self, batch: PendingProposalBatch) -> Optional[torch.Tensor]:
        """The recorded proposal with the step in flight's tokens read on the device: they
        take the catch-up's last columns, inert past the count that step emits. Without
        recordings (or past their sizes) the runner waits and calls ``propose``."""
        recorded = self.recorded
        rows = batch.rows
        if recorded is None or len(rows) > recorded.sizes[-1]:
            return None
        known, pending = batch.num_known, batch.num_pending
        # Without tokens in flight the last known one is not in the draft's cache yet.
        start = np.minimum(self.num_draft_computed[rows], known - (pending == 0))
        long = np.nonzero(known - start + pending > recorded.q)[0]
        if len(long):
            cut = known[long] - (recorded.q - pending[long])
            self._catch_up(batch, rows[long], start[long], cut)
            start[long] = cut
        drafts = recorded.replay_pending(batch, start)
        # An upper bound: the next proposal starts at its known tokens, which are final.
        self.num_draft_computed[rows] = known + pending
        return drafts

    def _tokens(self, batch: ProposalBatch, rows: np.ndarray, start: np.ndarray,
                lens: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The ids (on the device) and positions of ``lens[i]`` tokens of row ``rows[i]``
        from position ``start[i]``, flat."""
        cu = np.cumsum(lens)
        seq_of_token = np.repeat(np.arange(len(rows)), lens)
        positions = start[seq_of_token] + np.arange(int(cu[-1])) - (cu - lens)[seq_of_token]
        return self.context.upload(batch.token_ids[rows[seq_of_token], positions]), positions

    def _catch_up(self, batch: ProposalBatch, rows: np.ndarray, start: np.ndarray,
                  end: np.ndarray) -> None:
        """Write the draft's K/V of positions ``start[i] .. end[i] - 1`` of each row."""
        input_ids, positions = self._tokens(batch, rows, start, end - start)
        with self.context.inference_mode():
            self._forward(batch, rows, input_ids, positions, end - start, end)

    def _forward(self, batch: ProposalBatch, rows: np.ndarray, input_ids: torch.Tensor,
                 positions: np.ndarray, query_lens: np.ndarray,
                 seq_lens: np.ndarray) -> torch.Tensor:
        """The draft's hidden states over a flat batch: ``query_lens[i]`` tokens of row
        ``rows[i]`` ending at length ``seq_lens[i]``, at ``positions``."""
        ctx = self.context
        md = flat_batch_metadata(ctx, batch, rows, positions, query_lens, seq_lens)
        return self.model(input_ids, ctx.upload(positions), ForwardContext(md, self.kv_caches))
