"""The torch model runner: one forward pass over a flat token batch per step, then sampling.

Per step: update the persistent ``InputBatch`` with the scheduler's diffs, gather the flat
inputs for the scheduled rows with vectorised numpy, run the model, compute logits only at
positions that sample (or that the request wants prompt logprobs for), sample, and return the
tokens with a single device-to-host copy.

It runs on any torch device: everything device-specific (pinned staging memory, events,
synchronisation, the inference-mode context) is asked of the platform in ``RunnerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from llmserve.attention.backend import AttentionMetadata, ForwardContext
from llmserve.kv_cache.spec import CacheSpec, KVCacheConfig
from llmserve.models.loader import load_model, read_hf_config, resolve_architecture
from llmserve.runner.base import CompletedStep, ModelRunnerBase, RunnerConfig
from llmserve.sample import Sampler, SamplingMetadata, make_logits_processors
from llmserve.sample.sampler import SamplerOutput, compute_prompt_logprobs, gather_logprobs
from llmserve.scheduler.output import (DRAFT_PLACEHOLDER, GrammarBitmask, LogprobsLists,
                                       ModelRunnerOutput, SchedulerOutput)
from llmserve.sample.metadata import OUTPUT_READING_FEATURES
from llmserve.runner.input_batch import PLACEHOLDER, InputBatch
from llmserve.sampling_params import SAMPLING_EPS
from llmserve.spec_decode.proposer import (PendingProposalBatch, ProposalBatch, Proposer,
                                           ProposerContext, TargetStep)
from llmserve.spec_decode.rejection import PAD, greedy_verify, rejection_sample


@dataclass
class StepBatch:
    """One step's flat batch on the host: per scheduled request, then per token."""

    rows: np.ndarray  # [num_seqs] InputBatch row of each request
    num_sched: np.ndarray  # [num_seqs] tokens computed this step
    computed: np.ndarray  # [num_seqs] tokens already in the cache before this step
    cu: np.ndarray  # [num_seqs] cumulative num_sched (end offset of each request's tokens)
    input_ids: np.ndarray  # [num_tokens]
    positions: np.ndarray  # [num_tokens]
    slots: np.ndarray  # [num_tokens] flat cache slot of each token
    seq_lens: np.ndarray  # [num_seqs] computed + num_sched
    #: Flat positions whose input token the previous step sampled and the host does not have
    #: yet, and where each sits in that step's sampled tokens (asynchronous scheduling).
    pending_flat: Optional[np.ndarray] = None
    pending_src: Optional[np.ndarray] = None
    #: Flat positions of drafts the proposer made on the device, and where each sits in
    #: the flattened ``[num_proposals, k]`` drafts.
    draft_flat: Optional[np.ndarray] = None
    draft_src: Optional[np.ndarray] = None
    #: Requests (indices into this step) whose host positions assume every draft the
    #: previous, unresolved step verified is accepted, and where each sits in that step's
    #: sampled tokens: the device moves their positions back by the rejected count.
    shift_seq: Optional[np.ndarray] = None
    shift_src: Optional[np.ndarray] = None

    @property
    def has_device_inputs(self) -> bool:
        """Whether inputs wait for the previous step's device results."""
        return (self.pending_flat is not None or self.draft_flat is not None
                or self.shift_seq is not None)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.rows)

    @property
    def is_decode_only(self) -> bool:
        return self.num_tokens == self.num_seqs


class ModelRunner(ModelRunnerBase):
    """The torch runner; platform runners subclass it (the GPU one replays graphs in
    ``run_model``)."""

    supports_async_speculation = True

    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        engine = config.engine
        self.platform = config.platform
        self.attn_backend = config.attn_backend
        self.device = self.platform.device()
        self.dtype: torch.dtype = getattr(torch, config.dtype)
        self.vocab_size = int(config.hf_config["vocab_size"])
        self.block_size = engine.cache.block_size
        self.max_num_seqs = engine.scheduler.max_num_seqs
        self.max_model_len = engine.model.max_model_len
        self.batch = InputBatch(self.max_num_seqs, self.max_model_len, self.block_size)
        self.model: Optional[torch.nn.Module] = None
        #: The last launched step, whose sampled tokens may still be on their way to the host.
        self._previous: Optional[PendingOutput] = None
        # Built-ins first, then the classes plugins contribute through the hook.
        self.sampler = Sampler(make_logits_processors(config.logits_processor_classes))
        self.ops = self.platform.layer_ops()
        #: The launched step whose sampling waits for its grammar bitmask (``sample_tokens``).
        self._held: Optional[HeldSampling] = None
        self.kv_caches: list = []
        #: Whether the model has per-request state layers (the forward then gets slots).
        self.has_state_layers = False
        self.state_tensors: list[torch.Tensor] = []
        #: The speculative-decoding proposer (None: no speculation), built in ``load_model``.
        self.proposer: Optional[Proposer] = None
        spec = engine.speculative
        self.num_speculative_tokens = spec.num_speculative_tokens if spec else 0
        self.speculate_below = (spec.disable_by_batch_size if spec else None) or float("inf")
        #: With speculation, the scheduler schedules draft placeholders that the proposer
        #: fills at launch, before the previous step's tokens reach the host.
        self.drafts_ahead = engine.scheduler.async_scheduling and spec is not None
        #: [num_proposals, k] drafts made on the device for the step being launched.
        self._device_drafts: Optional[torch.Tensor] = None
        #: The step's input ids on the device (flat), where verification reads its drafts.
        self.step_input_ids: Optional[torch.Tensor] = None
        #: req_id -> drafts a host proposer filled of those scheduled, when fewer.
        self._scored_drafts: dict[str, int] = {}
        self._draft_index: Optional[np.ndarray] = None
        #: Steps launched only after waiting for the previous one's tokens on the host, and
        #: steps that made their drafts on the device (asynchronous scheduling).
        self.num_host_waits = 0
        self.num_device_proposals = 0
        #: Caching layers of the proposer (a draft model's), planned after the target's.
        self.num_proposer_cache_layers = 0
        #: Decoder layers whose inputs the proposer reads (EAGLE-3), and the step's
        #: ``[num_tokens, len * hidden]`` of them, set by ``run_model``.
        self.aux_layers: tuple[int, ...] = ()
        self.step_aux_hidden: Optional[torch.Tensor] = None

    def load_model(self) -> None:
        """Seed torch (dummy weights and unseeded sampling draw from it), then build the model
        with the platform's layer ops and stream the checkpoint onto the device."""
        config = self.config
        model_cfg = config.engine.model
        torch.manual_seed(model_cfg.seed)
        self.model = load_model(model_cfg.model, dict(config.hf_config), config.model_cls,
                                self.dtype, self.device, self.attn_backend,
                                model_cfg.max_model_len, config.load_format,
                                self.platform.layer_ops())
        if config.proposer_cls is not None:
            self.proposer = config.proposer_cls(self._proposer_context())
            self.proposer.load()
            self.aux_layers = tuple(self.proposer.target_layers())
            if self.aux_layers and not getattr(self.model, "supports_aux_hidden_states",
                                               False):
                raise ValueError(
                    f"speculative method {config.engine.speculative.method!r} reads the "
                    f"inputs of decoder layers {list(self.aux_layers)}, which the target "
                    f"architecture {type(self.model).__name__} cannot give")

    def _proposer_context(self) -> ProposerContext:
        config = self.config
        model_cfg = config.engine.model

        def load_draft(path: str, hf_config: Optional[dict] = None) -> torch.nn.Module:
            hf_config = dict(hf_config) if hf_config is not None else read_hf_config(path)
            _, model_cls = resolve_architecture(hf_config, config.model_classes or {},
                                                lambda: [])
            return load_model(path, hf_config, model_cls, self.dtype, self.device,
                              self.attn_backend, model_cfg.max_model_len, config.load_format,
                              self.platform.layer_ops())

        return ProposerContext(
            config=config.engine.speculative, target_model=model_cfg.model,
            target_hf_config=config.hf_config, device=self.device, dtype=self.dtype,
            block_size=self.block_size, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, load_format=config.load_format,
            load_model=load_draft, attention_metadata=self.attention_metadata,
            upload=self.upload, inference_mode=self.platform.inference_mode,
            target=self.model)

    # ---- set-up -------------------------------------------------------------------------

    def cache_specs(self) -> list[CacheSpec]:
        """What each caching layer of the model keeps, in ``ForwardContext.kv_caches`` order,
        then the proposer's layers (a draft model's)."""
        specs = self.model.cache_specs(self.block_size)
        if self.proposer is not None:
            proposer_specs = self.proposer.cache_specs()
            self.num_proposer_cache_layers = len(proposer_specs)
            specs = specs + proposer_specs
        return specs

    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None:
        """Allocate every layer's cache as the plan says: paged K/V per attention layer (in
        the backend's layout), ``[num_state_rows, *shape]`` tensors per state layer (running
        slots, then prefix-cache snapshots)."""
        # Zero-filled: masked-out slots are multiplied by zero weights, and stale finite values
        # are harmless where uninitialised memory could hold NaN.
        caches = []
        for spec in kv_config.layer_specs:
            if spec.is_paged:
                shape = self.attn_backend.kv_cache_shape(kv_config.num_blocks, spec.block_size,
                                                         spec.num_kv_heads, spec.head_size)
                caches.append(torch.zeros(shape, dtype=self.dtype, device=self.device))
            else:
                caches.append([torch.zeros((kv_config.num_state_rows, *shape),
                                           dtype=self.dtype if name is None
                                           else getattr(torch, name), device=self.device)
                               for shape, name in zip(spec.shapes, spec.tensor_dtypes())])
        num_target = len(caches) - self.num_proposer_cache_layers
        self.kv_caches = caches[:num_target]
        if self.proposer is not None:
            self.proposer.bind_kv_cache(caches[num_target:])
        self.has_state_layers = bool(kv_config.state_specs)
        #: Every state tensor of every state layer, for the snapshot copies.
        self.state_tensors = [t for spec, cache in zip(kv_config.layer_specs, caches)
                              if not spec.is_paged for t in cache]

    def warm_up(self) -> None:
        """Called once after the KV cache exists, before serving; platform runners capture
        their graphs here. The reference runner records none."""
        if self.proposer is not None:
            self.proposer.warm_up(None)

    def profile_run(self, num_tokens: int, num_seqs: int) -> None:
        """One forward pass at the largest step the scheduler can produce (``num_tokens``
        over ``num_seqs`` sequences, logits for every sequence), on a throwaway cache, so a
        platform can measure peak activation memory before sizing the KV cache."""
        with self.platform.inference_mode():
            self._profile_forward(num_tokens, num_seqs)

    def _profile_forward(self, num_tokens: int, num_seqs: int) -> None:
        bs = self.block_size
        num_seqs = max(1, min(num_seqs, num_tokens))
        # No sequence is longer than max_model_len, so no step is larger than this.
        num_tokens = min(num_tokens, num_seqs * self.max_model_len)
        lens = np.full(num_seqs, num_tokens // num_seqs, dtype=np.int64)
        lens[: num_tokens % num_seqs] += 1
        blocks_per_seq = -(-lens // bs)
        first_block = np.concatenate(([0], np.cumsum(blocks_per_seq)[:-1]))
        seq_of_token = np.repeat(np.arange(num_seqs), lens)
        cu = np.cumsum(lens)
        positions = np.arange(num_tokens) - (cu - lens)[seq_of_token]
        slots = (first_block[seq_of_token] + positions // bs) * bs + positions % bs
        tables = first_block[:, None] + np.arange(int(blocks_per_seq.max()))[None, :]
        saved = self.kv_caches
        self.initialize_kv_cache(KVCacheConfig(tuple(self.cache_specs()),
                                               int(blocks_per_seq.sum()), num_seqs))
        try:
            dev = self.device
            md = AttentionMetadata(
                num_tokens=num_tokens, num_seqs=num_seqs, max_query_len=int(lens.max()),
                max_seq_len=int(lens.max()), block_size=bs,
                query_start_loc=torch.from_numpy(np.concatenate(([0], cu))).to(dev),
                query_lens=torch.from_numpy(lens).to(dev),
                seq_lens=torch.from_numpy(lens).to(dev),
                block_tables=torch.from_numpy(tables).to(dev),
                slot_mapping=torch.from_numpy(slots).to(dev))
            self.attn_backend.prepare(md)
            hidden = self.model(torch.zeros(num_tokens, dtype=torch.long, device=dev),
                                torch.from_numpy(positions).to(dev),
                                ForwardContext(md, self.kv_caches,
                                               torch.arange(num_seqs, device=dev)
                                               if self.has_state_layers else None))
            logits = self.model.compute_logits(hidden[torch.from_numpy(cu - 1).to(dev)])
            torch.softmax(logits.float(), dim=-1)
        finally:
            self.kv_caches = saved

    # ---- one step -----------------------------------------------------------------------

    def _update_batch(self, so: SchedulerOutput) -> list[str]:
        batch = self.batch
        for rid in so.finished_req_ids:
            batch.remove(rid)
        for rid in so.preempted_req_ids:
            batch.remove(rid, keep_generator=True)
        req_ids = []
        for new in so.scheduled_new_reqs:
            row = batch.add(new, self.device)
            if self.proposer is not None:
                self.proposer.add_request(row, new.num_computed_tokens)
            req_ids.append(new.req_id)
        cached = so.scheduled_cached_reqs
        for rid, new_blocks in zip(cached.req_ids, cached.new_block_ids):
            if new_blocks:
                batch.append_blocks(rid, new_blocks)
        req_ids.extend(cached.req_ids)
        return req_ids

    def _step_batch(self, so: SchedulerOutput, req_ids: list[str]) -> StepBatch:
        """The flat token batch of this step, gathered from the persistent rows (numpy)."""
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
        bs = self.block_size
        step = StepBatch(
            rows=rows, num_sched=num_sched, computed=computed, cu=cu,
            input_ids=batch.token_ids[token_rows, positions],
            positions=positions,
            slots=batch.block_table[token_rows, positions // bs] * bs + positions % bs,
            seq_lens=computed + num_sched,
        )
        flat = np.nonzero(step.input_ids == PLACEHOLDER)[0]
        if len(flat):
            step.pending_flat = flat
            step.pending_src = self._previous.source_index(token_rows[flat])
        if self.drafts_ahead:
            self._mark_device_inputs(step, so, req_ids, seq_of_token)
        return step

    def _mark_device_inputs(self, step: StepBatch, so: SchedulerOutput, req_ids: list[str],
                            seq_of_token: np.ndarray) -> None:
        """Where this step's inputs wait for device results: drafts made on the device, and
        requests whose positions assume the previous step's drafts were all accepted."""
        flat = np.nonzero(step.input_ids == DRAFT_PLACEHOLDER)[0]
        if len(flat):
            step.draft_flat = flat
            step.draft_src = self._draft_index[seq_of_token[flat]] * self.num_speculative_tokens \
                + (flat - (step.cu - step.num_sched)[seq_of_token[flat]] - 1)
        previous = self._previous
        if previous is not None and not previous.resolved and previous.verify is not None:
            src = previous.source_index(step.rows, missing=-1)
            verified = src >= 0
            verified[verified] = previous.verify.num_scheduled[src[verified]] > 0
            if verified.any():
                step.shift_seq = np.nonzero(verified)[0]
                step.shift_src = src[step.shift_seq]

    def _attention_metadata(self, step: StepBatch) -> AttentionMetadata:
        max_blocks = int(-(-step.seq_lens.max() // self.block_size))
        return self.attention_metadata(step.num_sched, step.seq_lens, step.slots,
                                       self.batch.block_table[step.rows, :max_blocks])

    def attention_metadata(self, query_lens: np.ndarray, seq_lens: np.ndarray,
                           slots: np.ndarray, block_tables: np.ndarray) -> AttentionMetadata:
        """The backend's metadata of a flat batch: per sequence its new tokens, its length
        after them and its block-table row; per token its cache slot."""
        md = AttentionMetadata(
            num_tokens=len(slots),
            num_seqs=len(query_lens),
            max_query_len=int(query_lens.max()),
            max_seq_len=int(seq_lens.max()),
            block_size=self.block_size,
            query_start_loc=self.upload(np.concatenate(([0], np.cumsum(query_lens)))),
            query_lens=self.upload(query_lens),
            seq_lens=self.upload(seq_lens),
            block_tables=self.upload(block_tables),
            slot_mapping=self.upload(slots),
        )
        self.attn_backend.prepare(md)
        return md

    def run_model(self, step: StepBatch) -> torch.Tensor:
        """Hidden states of every token of the step, [num_tokens, hidden].

        Platform runners override this (e.g. to replay a captured graph for decode batches).
        """
        md = self._attention_metadata(step)
        input_ids = self.upload(step.input_ids)
        self._fill_device_inputs(step, input_ids)
        self.step_input_ids = input_ids
        fctx = self._forward_context(md, step)
        hidden = self.model(input_ids, self.upload(step.positions), fctx)
        if self.aux_layers:
            self.step_aux_hidden = torch.cat(fctx.aux_hidden_states, dim=-1)
        return hidden

    def _forward_context(self, md: AttentionMetadata, step: StepBatch) -> ForwardContext:
        slots = None
        if self.has_state_layers:
            slots = self.upload(self.batch.state_slot[step.rows])
        return ForwardContext(md, self.kv_caches, slots, aux_hidden_layers=self.aux_layers)

    def _copy_state_rows(self, copies: list[tuple[int, int]]) -> None:
        """Copy rows ``src -> dst`` in every state tensor (prefix-cache snapshots), queued on
        the device in order with the forward."""
        if not copies:
            return
        src, dst = self.upload(np.array(copies, dtype=np.int64).T)
        for tensor in self.state_tensors:
            tensor.index_copy_(0, dst, tensor.index_select(0, src))

    def execute_model_async(self, so: SchedulerOutput) -> "PendingOutput | CompletedStep":
        """Launch the step and return before its sampled tokens reach the host.

        The sampled tokens are copied back without blocking where the platform can pin host
        memory; the next step may already be launched (its inputs take those tokens on the
        device) before ``result()`` is read.
        """
        req_ids = self._update_batch(so)
        if not req_ids:
            return CompletedStep(ModelRunnerOutput([], [], []))
        with self.platform.inference_mode():
            return self._launch_step(so, req_ids)

    def _launch_step(self, so: SchedulerOutput, req_ids: list[str]) -> "PendingOutput":
        batch = self.batch
        dev = self.device
        drafts = so.scheduled_spec_decode_tokens
        if self.drafts_ahead:
            self._make_drafts(so, req_ids)
        elif drafts:
            self._write_drafts(drafts)
        step = self._step_batch(so, req_ids)
        self._copy_state_rows(so.state_restores)
        hidden = self.run_model(step)
        self._copy_state_rows(so.state_saves)
        rows, cu, seq_lens = step.rows, step.cu, step.seq_lens
        if self.proposer is not None and self.proposer.observes_target:
            self.proposer.observe(TargetStep(
                rows=rows, computed=step.computed, num_scheduled=step.num_sched,
                query_start=cu - step.num_sched, token_ids=batch.token_ids,
                num_tokens=batch.num_tokens[rows], hidden_states=hidden,
                aux_hidden_states=self.step_aux_hidden if self.aux_layers else None))

        # Requests whose computed tokens reach everything known sample a token this step.
        batch.num_computed[rows] = seq_lens
        sample_idx = np.nonzero(seq_lens >= batch.num_tokens[rows])[0]
        pending = PendingOutput(self, req_ids, sample_idx, rows[sample_idx])
        pending.grammar_req_ids = so.grammar_req_ids
        if len(sample_idx):
            sample_rows = pending.sample_rows
            arrays = batch.sampling_arrays(sample_rows)
            if np.any(arrays.features & OUTPUT_READING_FEATURES):
                # Penalties, min_tokens and logits processors read the output tokens: the
                # previous step's must be on the host first.
                self._resolve_previous()
            gens = batch.generators
            generators = ([gens.get(req_ids[i]) for i in sample_idx] if gens
                          else [None] * len(sample_idx))
            num_drafts = (np.fromiter((len(drafts.get(req_ids[i], ())) for i in sample_idx),
                                      dtype=np.int64, count=len(sample_idx))
                          if drafts else None)
            verify = None
            if num_drafts is not None:
                # Score every real draft and the position after it: rows offsets[j] ..
                # offsets[j] + scored[j] of the logits belong to sampling request j (a host
                # proposer may have filled fewer drafts than were scheduled).
                first = cu[sample_idx] - num_drafts - 1
                scored = num_drafts
                if self._scored_drafts:
                    scored = np.minimum(num_drafts, np.fromiter(
                        (self._scored_drafts.get(req_ids[i], self.num_speculative_tokens)
                         for i in sample_idx), dtype=np.int64, count=len(sample_idx)))
                counts = scored + 1
                offsets = np.cumsum(counts) - counts
                flat = np.repeat(first - offsets, counts) + np.arange(int(counts.sum()))
                sample_rows = np.repeat(sample_rows, counts)
                arrays = batch.sampling_arrays(sample_rows)
                verify = Verification(scored, offsets, generators,
                                      self._draft_ids(first, scored), num_scheduled=num_drafts)
                generators = [None] * len(flat)
            else:
                flat = cu[sample_idx] - 1
            logits = self.model.compute_logits(hidden[self.upload(flat)])
            md_s = SamplingMetadata.build(
                params=[batch.params[r] for r in sample_rows],
                output_token_ids=batch.output_rows(sample_rows),
                prompt_token_ids=batch.prompt_rows(sample_rows),
                stop_token_ids=[batch.stop_token_ids[r] for r in sample_rows],
                generators=generators,
                vocab_size=self.vocab_size,
                device=dev,
                arrays=arrays,
            )
            held = HeldSampling(pending, logits, md_s, verify)
            if so.grammar_req_ids:
                self._held = held  # sampled by sample_tokens, once the mask is filled
            else:
                self._sample(held)
        pending.prompt_logprobs = self._prompt_logprobs(
            req_ids, rows, cu - step.num_sched, step.computed, step.num_sched, hidden)
        self._previous = pending
        return pending

    def sample_tokens(self, grammar: GrammarBitmask) -> None:
        """Apply the step's grammar bitmask to the held logits (one device operation over
        the constrained rows only) and queue the sampling."""
        held, self._held = self._held, None
        if held is None:
            return
        with self.platform.inference_mode():
            rows = self.batch.row_of
            sample_rows = held.pending.sample_rows
            position = np.full(self.max_num_seqs, -1, dtype=np.int64)
            position[sample_rows] = (np.arange(len(sample_rows)) if held.verify is None
                                     else held.verify.offsets)
            mask_rows = np.fromiter((rows.get(r, -1) for r in grammar.req_ids), dtype=np.int64,
                                    count=len(grammar.req_ids))
            target = np.where(mask_rows >= 0, position[mask_rows], -1)
            keep = np.nonzero(target >= 0)[0]
            if len(keep):
                self.ops.apply_token_bitmask(held.logits, self.upload(grammar.bitmask[keep]),
                                             self.upload(target[keep]))
            self._sample(held)

    def _sample(self, held: "HeldSampling") -> None:
        pending, batch = held.pending, self.batch
        sample_rows = pending.sample_rows
        if held.verify is None:
            out = self.sampler.forward(held.logits, held.metadata)
        else:
            out = self._verify(held)
            pending.verify = held.verify
        counts = None if held.verify is None else held.verify.num_scheduled + 1
        pending.launch_copy(out, batch.reserve_tokens(sample_rows, counts),
                            [batch.params[r].logprobs for r in sample_rows]
                            if out.logprobs is not None else None)

    def _verify(self, held: "HeldSampling") -> SamplerOutput:
        """Speculative decoding: each sampling request's drafts against the target's scores,
        by the exact rejection sampler. Returns [num_reqs, max_drafts + 1] tokens (the
        accepted drafts, then the target's own token, then ``PAD``) and, if asked, the
        logprobs of each emitted token's position."""
        verify, md = held.verify, held.metadata
        num_drafts, offsets = verify.num_drafts, verify.offsets
        width = max(1, int(num_drafts.max()))
        raw_logprobs = (torch.log_softmax(held.logits.float(), dim=-1)
                        if md.max_num_logprobs is not None else None)
        # Row j, column c reads logits row offsets[j] + min(c, num_drafts[j]).
        index = offsets[:, None] + np.minimum(np.arange(width + 1)[None, :], num_drafts[:, None])
        index_t = self.upload(index)
        rows = held.pending.sample_rows
        draft_ids = verify.draft_ids
        probs, greedy = self.sampler.verification_inputs(held.logits, md)
        verify.num_drafts_t = num_drafts_t = self.upload(num_drafts)
        verify.reserved_t = (num_drafts_t + 1 if verify.num_scheduled is num_drafts
                             else self.upload(verify.num_scheduled + 1))
        if probs is None:
            verified = greedy_verify(greedy[index_t], draft_ids, num_drafts_t)
        else:
            temperature = self.batch.sampling["temperature"][rows]
            gens = {j: g for j, g in enumerate(verify.generators) if g is not None}
            verified = rejection_sample(probs[index_t], draft_ids, num_drafts_t, None,
                                        self.upload(temperature < SAMPLING_EPS), gens,
                                        target_argmax=greedy[index_t])
        logprobs = None
        if raw_logprobs is not None:
            # The token emitted at each scored position (PAD past a rejection scores id 0,
            # and is dropped on the host); columns past a request's own drafts repeat its
            # last row and are not written.
            emitted = verified.output_token_ids.clamp(min=0)
            own = np.arange(width + 1)[None, :] <= num_drafts[:, None]
            flat = torch.empty(len(held.logits), dtype=torch.long, device=self.device)
            flat[self.upload(index[own])] = emitted[self.upload(own)]
            logprobs = gather_logprobs(raw_logprobs, md.max_num_logprobs, flat)
        return SamplerOutput(verified.output_token_ids, logprobs)

    def propose(self, req_ids: list[str], sample_idx: np.ndarray, rows: np.ndarray,
                grammar_req_ids: list[str]) -> list[list[int]]:
        """The proposer's drafts for the next step, per request of ``req_ids``: for those
        that just sampled (``sample_idx``, at ``rows``), have tokens on the host, and use
        nothing that reads the output on the host (penalties, min_tokens, logits processors,
        a grammar), while fewer than ``disable_by_batch_size`` requests run."""
        drafts: list[list[int]] = [[] for _ in req_ids]
        if len(req_ids) >= self.speculate_below:
            return drafts
        batch = self.batch
        eligible = (batch.sampling["features"][rows] & OUTPUT_READING_FEATURES) == 0
        if grammar_req_ids:
            constrained = set(grammar_req_ids)
            eligible &= np.fromiter((req_ids[i] not in constrained for i in sample_idx),
                                    dtype=bool, count=len(sample_idx))
        sample_idx, rows = sample_idx[eligible], rows[eligible]
        if not len(rows):
            return drafts
        num_tokens = batch.num_tokens[rows]
        left = np.fromiter((batch.params[r].max_tokens or self.max_model_len for r in rows),
                           dtype=np.int64, count=len(rows)) \
            - (num_tokens - batch.num_prompt_tokens[rows])
        max_drafts = np.clip(np.minimum(self.max_model_len - num_tokens, left - 1), 0,
                             self.num_speculative_tokens)
        proposed = self._propose_rows([req_ids[i] for i in sample_idx], rows, max_drafts)
        for i, tokens in zip(sample_idx.tolist(), proposed):
            drafts[i] = np.asarray(tokens, dtype=np.int64).tolist()
        return drafts

    def _propose_rows(self, req_ids: list[str], rows: np.ndarray,
                      max_drafts: np.ndarray) -> list[np.ndarray]:
        """The proposer's drafts for these rows, every token of which is on the host."""
        batch = self.batch
        return self.proposer.propose(ProposalBatch(
            req_ids=req_ids, rows=rows, token_ids=batch.token_ids,
            num_tokens=batch.num_tokens[rows], max_drafts=max_drafts,
            block_table=batch.block_table))

    # ---- drafts made before the previous step resolves (asynchronous scheduling) -------

    def _write_drafts(self, drafts: dict[str, list[int]]) -> None:
        """The drafts follow each request's last token, where the step's inputs are read."""
        batch = self.batch
        for rid, tokens in drafts.items():
            row = batch.row_of[rid]
            n = batch.num_tokens[row]
            batch.token_ids[row, n:n + len(tokens)] = tokens

    def inputs_on_device(self, so: SchedulerOutput, req_ids: list[str]) -> bool:
        """Whether this step's inputs may wait on the device for the previous step's
        results (its tokens, its accepted counts, drafts made from them). Runners that
        replay graphs override this for the steps they replay; elsewhere the previous step
        is waited for first."""
        return False

    def _make_drafts(self, so: SchedulerOutput, req_ids: list[str]) -> None:
        """Make the step's scheduled draft placeholders before its forward. A proposer that
        drafts on the device (``propose_pending``) reads the previous step's tokens there when
        the step's inputs can wait on the device too; otherwise the previous step is waited
        for and the host proposes (where a method finds fewer drafts than were scheduled,
        the places left over repeat the last token and are computed but not scored)."""
        drafts = so.scheduled_spec_decode_tokens
        self._device_drafts = None
        self._scored_drafts = {}
        previous = self._previous
        # A proposer that observes the target reads the step's positions on the host.
        on_device = not self.proposer.observes_target and self.inputs_on_device(so, req_ids)
        if (previous is not None and not previous.resolved and not on_device
                and (drafts or previous.verify is not None)):
            self._wait_for(previous)  # its accepted counts move this step's positions
        if not drafts:
            return
        batch = self.batch
        order = [i for i, rid in enumerate(req_ids) if rid in drafts]
        ids = [req_ids[i] for i in order]
        rows = np.fromiter((batch.row_of[r] for r in ids), dtype=np.int64, count=len(ids))
        max_drafts = np.fromiter((len(drafts[r]) for r in ids), dtype=np.int64,
                                 count=len(ids))
        made = None
        if on_device:
            made = self.proposer.propose_pending(self._pending_proposals(ids, rows,
                                                                         max_drafts))
        if made is None:
            if previous is not None and not previous.resolved:
                self._wait_for(previous)
            proposed = self._propose_rows(ids, rows, max_drafts)
            # Positions past a request's own drafts repeat its last token and are not scored.
            self._scored_drafts = {rid: min(len(t), m) for rid, t, m in
                                   zip(ids, proposed, max_drafts.tolist())}
            last = batch.token_ids[rows, batch.num_tokens[rows] - 1]
            self._write_drafts({
                rid: np.concatenate([tokens[:m], np.full(m - min(m, len(tokens)), tok)]).tolist()
                for rid, tokens, m, tok in zip(ids, proposed, max_drafts.tolist(),
                                               last.tolist())})
            return
        self.num_device_proposals += 1
        self._device_drafts = made
        self._draft_index = np.full(len(req_ids), -1, dtype=np.int64)
        self._draft_index[order] = np.arange(len(order))
        self._write_drafts(drafts)

    def _wait_for(self, previous: "PendingOutput") -> None:
        self.num_host_waits += 1
        previous.result()

    def _pending_proposals(self, req_ids: list[str], rows: np.ndarray,
                           max_drafts: np.ndarray) -> PendingProposalBatch:
        """What a proposer drafts from before the previous step's tokens reach the host."""
        batch = self.batch
        n = len(rows)
        num_pending = np.zeros(n, dtype=np.int64)
        previous = self._previous
        tokens = counts = None
        if previous is not None and not previous.resolved:
            src = previous.source_index(rows, missing=-1)
            has = src >= 0
            if has.any():
                num_pending[has] = previous.reserved[src[has]]
                index, mask = self.upload_all([np.maximum(src, 0), has])
                tokens = previous.emitted[index]
                counts = torch.where(mask > 0, previous.num_emitted[index], 0)
        if tokens is None:
            tokens = torch.zeros(n, 1, dtype=torch.long, device=self.device)
            counts = torch.zeros(n, dtype=torch.long, device=self.device)
        return PendingProposalBatch(
            req_ids=req_ids, rows=rows, token_ids=batch.token_ids,
            num_known=batch.num_tokens[rows] - num_pending, num_pending=num_pending,
            pending_tokens=tokens, num_pending_emitted=counts, max_drafts=max_drafts,
            block_table=batch.block_table)

    def _fill_device_inputs(self, step: StepBatch, ids: torch.Tensor,
                            pos: Optional[torch.Tensor] = None,
                            slots: Optional[torch.Tensor] = None,
                            seq_lens: Optional[torch.Tensor] = None,
                            block_tables: Optional[torch.Tensor] = None,
                            cols: Optional[np.ndarray] = None) -> None:
        """Complete the step's inputs on the device: the previous step's last tokens where
        the host has placeholders, the drafts made on the device, and, for requests whose
        previous verification is unresolved, positions, slots and lengths moved back by its
        rejected drafts. Tensors are laid out as the step's tokens (``cols[t]``: the column
        of flat token ``t``; none: in order) and requests (row ``i`` of ``seq_lens`` and
        ``block_tables``)."""
        if not step.has_device_inputs:
            return
        place = (lambda flat: flat) if cols is None else (lambda flat: cols[flat])
        host: list[np.ndarray] = []
        if step.pending_flat is not None:
            host += [place(step.pending_flat), step.pending_src]
        if step.draft_flat is not None:
            host += [place(step.draft_flat), step.draft_src]
        if step.shift_seq is not None:
            of_seq = np.full(step.num_seqs, -1, dtype=np.int64)
            of_seq[step.shift_seq] = np.arange(len(step.shift_seq))
            seq_of_token = np.repeat(np.arange(step.num_seqs), step.num_sched)
            flat = np.nonzero(of_seq[seq_of_token] >= 0)[0]
            host += [step.shift_src, place(flat), of_seq[seq_of_token[flat]],
                     seq_of_token[flat], step.shift_seq]
        parts = iter(self.upload_all(host))  # one copy for every index of the step
        previous = self._previous
        if step.pending_flat is not None:
            at, src = next(parts), next(parts)
            ids[at] = previous.last_tokens[src]
        if step.draft_flat is not None:
            at, src = next(parts), next(parts)
            ids[at] = self._device_drafts.reshape(-1)[src]
        if step.shift_seq is not None:
            src, at, shift_of_token, table_rows, seqs = (next(parts) for _ in range(5))
            rejected = previous.rejected[src]
            moved = pos[at] - rejected[shift_of_token]
            pos[at] = moved
            bs = self.block_size
            slots[at] = block_tables[table_rows, moved // bs] * bs + moved % bs
            seq_lens[seqs] -= rejected

    def upload_all(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Several int64 host arrays on the device in one copy (views of one tensor)."""
        if not arrays:
            return []
        sizes = [len(a) for a in arrays]
        return list(torch.split(self.upload(np.concatenate(arrays).astype(np.int64, copy=False)),
                                sizes))

    def _draft_ids(self, first: np.ndarray, num_drafts: np.ndarray) -> torch.Tensor:
        """[n, max drafts] each verifying request's drafts (0 past its own), read from the
        step's input ids on the device: they follow its first token, flat position
        ``first[j]``."""
        width = max(1, int(num_drafts.max()))
        cols = np.arange(width)[None, :]
        own = cols < num_drafts[:, None]
        index = self.upload(np.where(own, first[:, None] + 1 + cols, -1))
        return torch.where(index >= 0, self.step_input_ids[index.clamp(min=0)], 0)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device without blocking the host: staged through pinned
        memory, so queueing the copy does not wait for the device work queued before it."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if not self.platform.can_pin_memory:
            return tensor.to(self.device)  # the tensor itself on the CPU
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _resolve_previous(self) -> None:
        if self._previous is not None:
            self._previous.result()

    @staticmethod
    def _split_logprobs(lp: LogprobsLists, sample_idx, num_logprobs: list[Optional[int]],
                        out: list[Optional[LogprobsLists]]) -> None:
        """Row j of the batch's logprobs, trimmed to what its request asked for."""
        for j, (i, k) in enumerate(zip(sample_idx.tolist(), num_logprobs)):
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
            targets = self.upload(batch.token_ids[row, first + 1:end + 2])
            logits = self.model.compute_logits(hidden[flat])
            lp = compute_prompt_logprobs(logits, targets, params.prompt_logprobs).tolists()
            result[req_ids[i]] = lp
        return result


@dataclass
class Verification:
    """Speculative decoding in a step: how many drafts each sampling request has, where its
    scored positions start among the step's logits rows, and its seeded generator."""

    num_drafts: np.ndarray
    offsets: np.ndarray
    generators: list[Optional[torch.Generator]]
    #: [num_reqs, max drafts] the drafts on the device (0 past each request's own), and
    #: ``num_drafts`` there.
    draft_ids: Optional[torch.Tensor] = None
    num_drafts_t: Optional[torch.Tensor] = None
    #: Draft positions scheduled per request (``num_drafts`` or more: those past the scored
    #: ones are computed, never accepted), and their count + 1 on the device.
    num_scheduled: Optional[np.ndarray] = None
    reserved_t: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.num_scheduled is None:
            self.num_scheduled = self.num_drafts


@dataclass
class HeldSampling:
    """A step's logits and sampling inputs, between the forward and the sampling."""

    pending: "PendingOutput"
    logits: torch.Tensor
    metadata: SamplingMetadata
    verify: Optional[Verification] = None


class PendingOutput:
    """A launched step's output: sampled tokens travel to the host while the caller goes on.

    ``result()`` waits for them (once), writes them into the runner's rows in place of the
    placeholders, and returns the ``ModelRunnerOutput``.
    """

    def __init__(self, runner: ModelRunner, req_ids: list[str], sample_idx: np.ndarray,
                 sample_rows: np.ndarray) -> None:
        self.runner = runner
        self.req_ids = req_ids
        self.sample_idx = sample_idx
        self.sample_rows = sample_rows
        self.prompt_logprobs: dict[str, LogprobsLists] = {}
        #: Requests constrained by a grammar this step (they take no drafts).
        self.grammar_req_ids: list[str] = []
        #: Set when the step verified drafts: ``sampled`` is then [num_reqs, width + 1].
        self.verify: Optional[Verification] = None
        self.sampled: Optional[torch.Tensor] = None
        self._positions: Optional[np.ndarray] = None
        self._host: Optional[torch.Tensor] = None
        self._event = None
        self._logprobs = None
        self._result: Optional[ModelRunnerOutput] = None
        self._row_index: Optional[dict[int, int]] = None
        self._rolled: Optional[np.ndarray] = None
        self._device: dict[str, torch.Tensor] = {}

    @property
    def resolved(self) -> bool:
        return self._result is not None

    @property
    def reserved(self) -> np.ndarray:
        """Per sampling request, the placeholders its tokens took: drafts + 1, or 1."""
        if self.verify is None:
            return np.ones(len(self.sample_rows), dtype=np.int64)
        return self.verify.num_scheduled + 1

    def _on_device(self, name: str) -> torch.Tensor:
        """The step's results on the device, derived once (queued after the sampling):
        ``emitted`` [n, w] tokens per sampling request (``PAD`` after its own),
        ``num_emitted``, ``last_tokens`` and ``rejected`` (drafts not accepted)."""
        cache = self._device
        if not cache:
            sampled = self.sampled
            if self.verify is None:
                cache["emitted"] = sampled[:, None]
                cache["num_emitted"] = torch.ones_like(sampled)
                cache["last_tokens"] = sampled
                cache["rejected"] = torch.zeros_like(sampled)
            else:
                count = (sampled != PAD).sum(dim=1)
                cache["emitted"] = sampled
                cache["num_emitted"] = count
                cache["last_tokens"] = sampled.gather(1, (count - 1)[:, None])[:, 0]
                cache["rejected"] = self.verify.reserved_t - count
        return cache[name]

    emitted = property(lambda self: self._on_device("emitted"))
    num_emitted = property(lambda self: self._on_device("num_emitted"))
    last_tokens = property(lambda self: self._on_device("last_tokens"))
    rejected = property(lambda self: self._on_device("rejected"))

    def launch_copy(self, out, positions: np.ndarray,
                    num_logprobs: Optional[list[Optional[int]]]) -> None:
        """Start the device-to-host copy of ``out``'s tokens (placeholders at ``positions``).
        ``num_logprobs``: each row's ``logprobs`` setting, read now (rows may be reused
        before ``result()``)."""
        self.sampled = out.sampled_token_ids
        self._positions = positions
        self._rolled = self.runner.batch.num_rolled_back[self.sample_rows].copy()
        self._logprobs = out.logprobs
        self._num_logprobs = num_logprobs
        platform = self.runner.platform
        if platform.can_pin_memory:
            self._host = platform.host_buffer(tuple(self.sampled.shape), self.sampled.dtype)
            self._host.copy_(self.sampled, non_blocking=True)
        else:
            # Nothing to overlap with: a plain copy (none at all when already on the host).
            self._host = self.sampled.to("cpu")
        self._event = platform.record_event()

    def source_index(self, rows: np.ndarray, missing: Optional[int] = None) -> np.ndarray:
        """Where each of ``rows`` sits in this step's sampled tokens (``missing`` for rows
        that did not sample; None: every row must have)."""
        if self._row_index is None:
            self._row_index = {int(r): j for j, r in enumerate(self.sample_rows)}
        index = self._row_index
        if missing is None:
            return np.fromiter((index[int(r)] for r in rows), dtype=np.int64, count=len(rows))
        return np.fromiter((index.get(int(r), missing) for r in rows), dtype=np.int64,
                           count=len(rows))

    def result(self) -> ModelRunnerOutput:
        if self._result is None:
            self._result = self._finish()
            self.runner = None  # the runner keeps the last step: no cycle once it is read
        return self._result

    def _finish(self) -> ModelRunnerOutput:
        runner, req_ids = self.runner, self.req_ids
        sampled_lists: list[list[int]] = [[] for _ in req_ids]
        logprob_rows: list[Optional[LogprobsLists]] = [None] * len(req_ids)
        spec_token_ids: list[list[int]] = []
        num_draft_tokens: list[int] = []
        if self.sampled is not None:
            self._event.synchronize()
            tokens = self._host.numpy()
            batch = runner.batch
            # A row may have been freed (finished, preempted) and reused since the launch.
            owned = np.fromiter((batch.row_of.get(req_ids[i]) == r for i, r in
                                 zip(self.sample_idx.tolist(), self.sample_rows.tolist())),
                                dtype=bool, count=len(self.sample_idx))
            # Verifications resolved since the launch moved this step's placeholders down.
            self._positions = self._positions - (batch.num_rolled_back[self.sample_rows]
                                                 - self._rolled)
            if self.verify is not None:
                self._accept_verified(tokens, owned, sampled_lists, logprob_rows)
                num_draft_tokens = [0] * len(req_ids)
                for i, d in zip(self.sample_idx.tolist(), self.verify.num_drafts.tolist()):
                    num_draft_tokens[i] = d
            else:
                batch.fill_tokens(self.sample_rows[owned], self._positions[owned],
                                  tokens[owned])
                for i, tok in zip(self.sample_idx.tolist(), tokens.tolist()):
                    sampled_lists[i] = [tok]
                if self._logprobs is not None:
                    runner._split_logprobs(self._logprobs.tolists(), self.sample_idx,
                                           self._num_logprobs, logprob_rows)
            if runner.proposer is not None and not runner.drafts_ahead:
                spec_token_ids = runner.propose(req_ids, self.sample_idx[owned],
                                                self.sample_rows[owned], self.grammar_req_ids)
        return ModelRunnerOutput(req_ids, sampled_lists, logprob_rows, self.prompt_logprobs,
                                 spec_token_ids, num_draft_tokens)

    def _accept_verified(self, tokens: np.ndarray, owned: np.ndarray,
                         sampled_lists: list[list[int]],
                         logprob_rows: list[Optional[LogprobsLists]]) -> None:
        """Append each request's emitted tokens (accepted drafts + one) to its row, and roll
        its computed tokens back past the rejected drafts."""
        batch = self.runner.batch
        num_emitted = (tokens != PAD).sum(axis=1)
        lp = self._logprobs.tolists() if self._logprobs is not None else None
        verify = self.verify
        for j, (i, row, pos, n, d) in enumerate(zip(
                self.sample_idx.tolist(), self.sample_rows.tolist(), self._positions.tolist(),
                num_emitted.tolist(), verify.num_scheduled.tolist())):
            emitted = tokens[j, :n]
            sampled_lists[i] = emitted.tolist()
            if owned[j]:
                batch.accept(row, pos, emitted, d + 1)
            k = self._num_logprobs[j] if lp is not None else None
            if k is not None:
                first = int(verify.offsets[j])
                last = first + n
                logprob_rows[i] = LogprobsLists(
                    [ids[:k + 1] for ids in lp.token_ids[first:last]],
                    [lps[:k + 1] for lps in lp.logprobs[first:last]], lp.ranks[first:last])
