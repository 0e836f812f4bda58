"""A greedy proposal recorded as one device graph per batch size: a catch-up of at most
``k + 1`` positions per request, laid out ``k + 1`` columns per request as the target's
verification is (the columns past a request's own are inert and write the scratch slot),
then ``k - 1`` decode steps, each fed the previous step's argmax on the device.

The proposer supplies the model step: ``draft_step(input_ids, positions, fctx, features)``
returns ``(hidden for the tokens, hidden fed to the next step)`` and ``draft_tokens(hidden)``
the greedy drafts; ``kv_caches`` are its caches. A draft model reads no features; an EAGLE
head reads the target's features at the catch-up's positions (staged with the ids) and its
own hidden state at each decode step.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from llmserve.attention.backend import ForwardContext
from llmserve.spec_decode.proposer import GraphCapture, PendingProposalBatch, ProposalBatch


class RecordedDrafting:
    """One proposal recorded per batch size, with the static inputs it reads."""

    #: Rows of the staged inputs: per token ids, positions, slots; per request (first
    #: columns) the catch-up's padded length, its last real column, the last position fed
    #: and the drafts allowed.
    IDS, POS, SLOT, SEQ_LEN, LAST, BASE, MAX_DRAFTS = range(7)

    def __init__(self, proposer, graphs: GraphCapture,
                 feature_size: Optional[int] = None) -> None:
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
        #: [max_size * q, feature_size] the catch-up's features (EAGLE), or None.
        self.features = (torch.zeros(max_size * q, feature_size, dtype=ctx.dtype, device=dev)
                         if feature_size else None)
        # Recording runs the graph on these: its K/V writes go to the scratch slot.
        self.inputs[self.SLOT] = self.scratch_slot
        self.decode[2] = self.scratch_slot
        self.replays = {size: graphs.record(self._drafting(size, graphs))
                        for size in reversed(self.sizes)}

    def _drafting(self, size: int, graphs: GraphCapture):
        p = self.proposer
        ctx, q, k = p.context, self.q, p.k
        bs, last_position = ctx.block_size, ctx.max_model_len - 1
        inp, dec, tables = self.inputs, self.decode, self.block_tables[:size]
        features = self.features[:size * q] if self.features is not None else None
        catch_up = graphs.attention_metadata(q, inp[self.SEQ_LEN, :size], tables,
                                             inp[self.SLOT, :size * q])
        step = graphs.attention_metadata(1, dec[3, :size], tables, dec[2, :size])

        def drafting() -> torch.Tensor:
            out, fed = p.draft_step(inp[self.IDS, :size * q], inp[self.POS, :size * q],
                                    ForwardContext(catch_up, p.kv_caches), features)
            last = inp[self.LAST, :size]
            token = p.draft_tokens(out[last])
            fed = fed[last] if features is not None else None
            tokens = [token]
            base, allowed = inp[self.BASE, :size], inp[self.MAX_DRAFTS, :size]
            for j in range(1, k):
                pos = torch.clamp(base + j, max=last_position)
                slot = tables.gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs
                dec[0, :size] = token
                dec[1, :size] = pos
                dec[2, :size] = torch.where(allowed > j, slot, self.scratch_slot)
                dec[3, :size] = pos + 1
                out, fed = p.draft_step(dec[0, :size], dec[1, :size],
                                        ForwardContext(step, p.kv_caches), fed)
                token = p.draft_tokens(out)
                fed = fed if features is not None else None
                tokens.append(token)
            return torch.stack(tokens, dim=1)

        return drafting

    def replay(self, batch: ProposalBatch, rows: np.ndarray, start: np.ndarray,
               lens: np.ndarray, max_drafts: np.ndarray,
               features: Optional[torch.Tensor] = None, id_offset: int = 0) -> np.ndarray:
        """[len(rows), k] drafts after feeding ``lens[i]`` positions of each row from
        ``start[i]`` (the ids at ``position + id_offset``; ``features``: one row per fed
        position, flat): stage the inputs (one upload), replay, one host copy."""
        ctx, n = self.proposer.context, len(rows)
        with ctx.inference_mode():
            size, cols = self._stage(batch, rows, start, lens, max_drafts, id_offset=id_offset)
            if features is not None:
                self.features[ctx.upload(cols)] = features
            return self.replays[size]()[:n].cpu().numpy()

    def replay_pending(self, batch: PendingProposalBatch, start: np.ndarray) -> torch.Tensor:
        """[n, k] drafts on the device: the known tokens from ``start``, then the tokens in
        flight, whose ids, count and slots are completed on the device before the replay."""
        ctx, q, rows = self.proposer.context, self.q, batch.rows
        n = len(rows)
        host = batch.num_known - start
        pending = batch.num_pending
        with ctx.inference_mode():
            size, _ = self._stage(batch, rows, start, host, batch.max_drafts, pending)
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
               max_drafts: np.ndarray, pending: Optional[np.ndarray] = None,
               id_offset: int = 0) -> tuple[int, np.ndarray]:
        """Upload the static inputs of ``host[i]`` positions of each row from ``start[i]``
        (ids and slots), followed by ``pending[i]`` columns whose ids the device fills;
        returns the size replayed and the staged columns, flat."""
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
        staged[self.IDS, cols[known]] = batch.token_ids[token_rows[known],
                                                        positions[known] + id_offset]
        staged[self.POS, cols] = positions
        staged[self.SLOT, cols] = (batch.block_table[token_rows, positions // bs] * bs
                                   + positions % bs)
        staged[self.SEQ_LEN, :n] = start + q
        staged[self.LAST, :n] = np.arange(n) * q + host - 1
        staged[self.LAST, n:size] = np.arange(n, size) * q
        staged[self.BASE, :n] = start + host - 1
        staged[self.MAX_DRAFTS, :n] = max_drafts
        nb = min(int(-(-(int((start + lens).max()) + q) // bs)), batch.block_table.shape[1])
        table = np.full((size, nb), self.scratch_slot // bs, dtype=np.int64)
        table[:n] = batch.block_table[rows, :nb]
        self.inputs[:, :size * q].copy_(ctx.upload(staged))
        self.block_tables[:size, :nb].copy_(ctx.upload(table))
        return size, cols
