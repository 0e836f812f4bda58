"""Turns a ``SchedulerOutput`` into one forward pass over a flat token batch, then samples.

Per step: update the persistent ``InputBatch`` with the scheduler's diffs, gather the flat
inputs for the scheduled rows with vectorised numpy, run the model, compute logits only at
positions that sample (or that the request wants prompt logprobs for), sample, and return the
tokens with a single device-to-host copy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from llmserve.attention.backend import AttentionMetadata, ForwardContext
from llmserve.sample import Sampler, SamplingMetadata, make_logits_processors
from llmserve.sample.sampler import compute_prompt_logprobs
from llmserve.scheduler.output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from llmserve.worker.input_batch import InputBatch


class ModelRunner:
    def __init__(self, model: torch.nn.Module, attn_backend: type, device: torch.device,
                 dtype: torch.dtype, vocab_size: int, max_num_seqs: int, max_model_len: int,
                 block_size: int, logits_processor_classes: Sequence[type] = ()) -> None:
        self.model = model
        self.attn_backend = attn_backend
        self.device = device
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch = InputBatch(max_num_seqs, max_model_len, block_size)
        # Built-ins first, then the classes plugins contribute through the hook.
        self.sampler = Sampler(make_logits_processors(logits_processor_classes))
        self.kv_caches: list[torch.Tensor] = []

    # ---- set-up -------------------------------------------------------------------------

    def kv_cache_layer_shapes(self) -> list[tuple[int, int]]:
        """(num_kv_heads, head_dim) of each attention layer, in layer order."""
        return [(a.num_kv_heads, a.head_dim) for a in self.model.attention_layers()]

    def initialize_kv_cache(self, num_blocks: int) -> None:
        # Zero-filled: masked-out slots are multiplied by zero weights, and stale finite values
        # are harmless where uninitialised memory could hold NaN.
        self.kv_caches = [
            torch.zeros(self.attn_backend.kv_cache_shape(num_blocks, self.block_size, kvh, d),
                        dtype=self.dtype, device=self.device)
            for kvh, d in self.kv_cache_layer_shapes()
        ]

    # ---- one step -----------------------------------------------------------------------

    def _update_batch(self, so: SchedulerOutput) -> list[str]:
        batch = self.batch
        for rid in so.finished_req_ids:
            batch.remove(rid)
        for rid in so.preempted_req_ids:
            batch.remove(rid, keep_generator=True)
        req_ids = []
        for new in so.scheduled_new_reqs:
            batch.add(new, self.device)
            req_ids.append(new.req_id)
        cached = so.scheduled_cached_reqs
        for rid, new_blocks in zip(cached.req_ids, cached.new_block_ids):
            if new_blocks:
                batch.append_blocks(rid, new_blocks)
        req_ids.extend(cached.req_ids)
        return req_ids

    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        req_ids = self._update_batch(so)
        if not req_ids:
            return ModelRunnerOutput([], [], [])
        batch = self.batch
        rows = np.fromiter((batch.row_of[r] for r in req_ids), dtype=np.int64, count=len(req_ids))
        num_sched = np.fromiter((so.num_scheduled_tokens[r] for r in req_ids), dtype=np.int64,
                                count=len(req_ids))
        computed = batch.num_computed[rows]
        cu = np.cumsum(num_sched)
        starts = cu - num_sched
        total = int(cu[-1])
        seq_of_token = np.repeat(np.arange(len(rows)), num_sched)
        positions = computed[seq_of_token] + (np.arange(total) - starts[seq_of_token])
        token_rows = rows[seq_of_token]
        input_ids = batch.token_ids[token_rows, positions]
        bs = self.block_size
        slots = batch.block_table[token_rows, positions // bs] * bs + positions % bs
        seq_lens = computed + num_sched
        max_blocks = int(-(-seq_lens.max() // bs))

        dev = self.device
        md = AttentionMetadata(
            num_tokens=total,
            num_seqs=len(rows),
            max_query_len=int(num_sched.max()),
            max_seq_len=int(seq_lens.max()),
            block_size=bs,
            query_start_loc=torch.from_numpy(np.concatenate(([0], cu))).to(dev),
            query_lens=torch.from_numpy(num_sched).to(dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev),
            block_tables=torch.from_numpy(batch.block_table[rows, :max_blocks]).to(dev),
            slot_mapping=torch.from_numpy(slots).to(dev),
        )
        self.attn_backend.prepare(md)
        hidden = self.model(torch.from_numpy(input_ids).to(dev),
                            torch.from_numpy(positions).to(dev),
                            ForwardContext(md, self.kv_caches))

        # Requests whose computed tokens reach everything known sample a token this step.
        batch.num_computed[rows] = seq_lens
        samples = seq_lens >= batch.num_tokens[rows]
        sample_idx = np.nonzero(samples)[0]
        sampled_lists: list[list[int]] = [[] for _ in req_ids]
        logprob_rows: list[Optional[LogprobsLists]] = [None] * len(req_ids)
        if len(sample_idx):
            sample_rows = rows[sample_idx]
            logits = self.model.compute_logits(hidden[torch.from_numpy(cu[sample_idx] - 1).to(dev)])
            gens = batch.generators
            md_s = SamplingMetadata.build(
                params=[batch.params[r] for r in sample_rows],
                output_token_ids=batch.output_rows(sample_rows),
                prompt_token_ids=batch.prompt_rows(sample_rows),
                stop_token_ids=[batch.stop_token_ids[r] for r in sample_rows],
                generators=([gens.get(req_ids[i]) for i in sample_idx] if gens
                            else [None] * len(sample_idx)),
                vocab_size=self.vocab_size,
                device=dev,
                arrays=batch.sampling_arrays(sample_rows),
            )
            out = self.sampler.forward(logits, md_s)
            tokens = out.sampled_token_ids.cpu().numpy()
            batch.append_tokens(sample_rows, tokens)
            for i, tok in zip(sample_idx.tolist(), tokens.tolist()):
                sampled_lists[i] = [tok]
            if out.logprobs is not None:
                self._split_logprobs(out.logprobs.tolists(), sample_idx, sample_rows,
                                     logprob_rows)
        prompt_lp = self._prompt_logprobs(req_ids, rows, starts, computed, num_sched, hidden)
        return ModelRunnerOutput(req_ids, sampled_lists, logprob_rows, prompt_lp)

    def _split_logprobs(self, lp: LogprobsLists, sample_idx, sample_rows,
                        out: list[Optional[LogprobsLists]]) -> None:
        """Row j of the batch's logprobs, trimmed to what its request asked for."""
        for j, (i, row) in enumerate(zip(sample_idx.tolist(), sample_rows.tolist())):
            k = self.batch.params[row].logprobs
            if k is not None:
                out[i] = LogprobsLists([lp.token_ids[j][:k + 1]], [lp.logprobs[j][:k + 1]],
                                       [lp.ranks[j]])

    def _prompt_logprobs(self, req_ids, rows, starts, computed, num_sched,
                         hidden) -> dict[str, LogprobsLists]:
        """Logprobs of prompt tokens 1..P-1 for the positions computed this step."""
        result: dict[str, LogprobsLists] = {}
        batch = self.batch
        for i in np.nonzero(batch.wants_prompt_logprobs[rows])[0].tolist():
            row = rows[i]
            params = batch.params[row]
            last = int(batch.num_prompt_tokens[row]) - 2  # last position predicting a prompt token
            first = int(computed[i])
            end = min(first + int(num_sched[i]) - 1, last)
            if end < first:
                continue
            flat = torch.arange(starts[i], starts[i] + end - first + 1, device=self.device)
            targets = torch.from_numpy(batch.token_ids[row, first + 1:end + 2]).to(self.device)
            logits = self.model.compute_logits(hidden[flat])
            lp = compute_prompt_logprobs(logits, targets, params.prompt_logprobs).tolists()
            result[req_ids[i]] = lp
        return result
