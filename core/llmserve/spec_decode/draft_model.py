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
            table = recorded.replay(batch, rows, start, num_tokens, max_drafts)
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


class RecordedDrafting:
    """One proposal (catch-up of at most ``k + 1`` tokens per request, then ``k - 1`` decode
    steps) recorded per batch size, with the static inputs it reads."""

    #: Rows of the staged inputs: per token ids, positions, slots; per request (first
    #: columns) the catch-up's padded length, its last real column, the position of the last
    #: known token and the drafts allowed.
    IDS, POS, SLOT, SEQ_LEN, LAST, BASE, MAX_DRAFTS = range(7)

    def __init__(self, proposer: DraftModelProposer, graphs: GraphCapture) -> None:
        ctx = proposer.context
        self.proposer = proposer
        self.q = q = proposer.k + 1
        self.scratch_slot = graphs.scratch_slot
        limit = min(ctx.max_num_seqs, ctx.config.disable_by_batch_size or ctx.max_num_seqs)
        self.sizes = [s for s in graphs.sizes if s <= limit] or graphs.sizes[:1]
        max_size = self.sizes[-1]
        dev = ctx.device
        self.width = -(-ctx.max_model_len // ctx.block_size) + -(-q // ctx.block_size)
        self.inputs = torch.zeros(7, max_size * q, dtype=torch.long, device=dev)
        self.block_tables = torch.full((max_size, self.width),
                                       self.scratch_slot // ctx.block_size,
                                       dtype=torch.long, device=dev)
        self.decode = torch.zeros(4, max_size, dtype=torch.long, device=dev)
        # Recording runs the graph on these: its K/V writes go to the scratch slot.
        self.inputs[self.SLOT] = self.scratch_slot
        self.decode[2] = self.scratch_slot
        self.replays = {size: graphs.record(self._drafting(size, graphs))
                        for size in reversed(self.sizes)}

    def _drafting(self, size: int, graphs: GraphCapture):
        p = self.proposer
        ctx, model, q, k = p.context, p.model, self.q, p.k
        bs, last_position = ctx.block_size, ctx.max_model_len - 1
        inp, dec, tables = self.inputs, self.decode, self.block_tables[:size]
        catch_up = graphs.attention_metadata(q, inp[self.SEQ_LEN, :size], tables,
                                             inp[self.SLOT, :size * q])
        step = graphs.attention_metadata(1, dec[3, :size], tables, dec[2, :size])

        def drafting() -> torch.Tensor:
            hidden = model(inp[self.IDS, :size * q], inp[self.POS, :size * q],
                           ForwardContext(catch_up, p.kv_caches))
            token = model.compute_logits(hidden[inp[self.LAST, :size]]).argmax(dim=-1)
            tokens = [token]
            base, allowed = inp[self.BASE, :size], inp[self.MAX_DRAFTS, :size]
            for j in range(1, k):
                pos = torch.clamp(base + j, max=last_position)
                slot = tables.gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs
                dec[0, :size] = token
                dec[1, :size] = pos
                dec[2, :size] = torch.where(allowed > j, slot, self.scratch_slot)
                dec[3, :size] = pos + 1
                hidden = model(dec[0, :size], dec[1, :size], ForwardContext(step, p.kv_caches))
                token = model.compute_logits(hidden).argmax(dim=-1)
                tokens.append(token)
            return torch.stack(tokens, dim=1)

        return drafting

    def replay(self, batch: ProposalBatch, rows: np.ndarray, start: np.ndarray,
               num_tokens: np.ndarray, max_drafts: np.ndarray) -> np.ndarray:
        """[len(rows), k] drafts: stage the inputs (one upload), replay, one host copy."""
        ctx, n = self.proposer.context, len(rows)
        with ctx.inference_mode():
            size = self._stage(batch, rows, start, num_tokens - start, num_tokens, max_drafts)
            return self.replays[size]()[:n].cpu().numpy()

    def replay_pending(self, batch: PendingProposalBatch, start: np.ndarray) -> torch.Tensor:
        """[n, k] drafts on the device: the known tokens from ``start``, then the tokens in
        flight, whose ids, count and slots are completed on the device before the replay."""
        ctx, q, rows = self.proposer.context, self.q, batch.rows
        n = len(rows)
        host = batch.num_known - start
        pending = batch.num_pending
        with ctx.inference_mode():
            size = self._stage(batch, rows, start, host, batch.num_known, batch.max_drafts,
                               pending)
            seq = np.repeat(np.arange(n), pending)
            if len(seq):
                offset = np.arange(len(seq)) - np.repeat(np.cumsum(pending) - pending, pending)
                cols, seq_t, offset_t = ctx.upload(
                    np.stack([seq * q + host[seq] + offset, seq, offset]))
                inp = self.inputs
                emitted = offset_t < batch.num_pending_emitted[seq_t]
                inp[self.IDS, cols] = torch.where(emitted, batch.pending_tokens[seq_t, offset_t],
                                                  0)
                inp[self.SLOT, cols] = torch.where(emitted, inp[self.SLOT, cols],
                                                   self.scratch_slot)
                inp[self.LAST, :n] += batch.num_pending_emitted
                inp[self.BASE, :n] += batch.num_pending_emitted
            return self.replays[size]()[:n]

    def _stage(self, batch, rows: np.ndarray, start: np.ndarray, host: np.ndarray,
               num_known: np.ndarray, max_drafts: np.ndarray,
               pending: Optional[np.ndarray] = None) -> int:
        """Upload the static inputs of ``host[i]`` known tokens of each row from ``start[i]``
        (ids and slots), followed by ``pending[i]`` columns whose ids the device fills;
        returns the size replayed."""
        ctx, q, n = self.proposer.context, self.q, len(rows)
        size = next(s for s in self.sizes if s >= n)
        bs = ctx.block_size
        lens = host if pending is None else host + pending
        staged = np.zeros((7, size * q), dtype=np.int64)
        staged[self.SLOT] = self.scratch_slot
        staged[self.SEQ_LEN, :size] = q
        seq_of_token = np.repeat(np.arange(n), lens)
        first = np.cumsum(lens) - lens
        offset = np.arange(int(lens.sum())) - first[seq_of_token]
        cols = seq_of_token * q + offset
        positions = start[seq_of_token] + offset
        token_rows = rows[seq_of_token]
        known = offset < host[seq_of_token]
        staged[self.IDS, cols[known]] = batch.token_ids[token_rows[known], positions[known]]
        staged[self.POS, cols] = positions
        staged[self.SLOT, cols] = (batch.block_table[token_rows, positions // bs] * bs
                                   + positions % bs)
        staged[self.SEQ_LEN, :n] = start + q
        staged[self.LAST, :n] = np.arange(n) * q + host - 1
        staged[self.LAST, n:size] = np.arange(n, size) * q
        staged[self.BASE, :n] = num_known - 1
        staged[self.MAX_DRAFTS, :n] = max_drafts
        end = num_known + (0 if pending is None else pending)
        nb = min(int(-(-(int(end.max()) + q) // bs)), batch.block_table.shape[1])
        table = np.full((size, nb), self.scratch_slot // bs, dtype=np.int64)
        table[:n] = batch.block_table[rows, :nb]
        self.inputs[:, :size * q].copy_(ctx.upload(staged))
        self.block_tables[:size, :nb].copy_(ctx.upload(table))
        return size
