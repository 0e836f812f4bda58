"""The GPU runner: CUDA graphs for decode steps, memory profiling for the KV budget.

A decode step launches a few hundred small kernels; at batch 1 launching them costs more
than running them. Each captured graph replays the whole forward of a decode batch of one
fixed size from static input buffers. A step of ``n`` requests uses the smallest captured
size ``>= n``; the extra rows write their K/V into a scratch block that belongs to no request,
advance a scratch state row (models with per-request state layers) and their outputs are
dropped. Prefill and mixed steps run eagerly.

With speculative decoding, a second set of graphs takes ``k + 1`` tokens per request: a step
where no request computes more than that (drafts being verified, short prefill tails) is
laid out with each request's tokens at the start of its ``k + 1`` columns, the rest inert.
Causal attention keeps the inert tokens out of the real ones' results. The proposer may
record graphs of its own through ``GraphCapture``, on the same memory pool.

Capture and replay go through ``torch.cuda``, which ROCm builds of torch implement too (as
HIP graphs), so every ``GpuPlatform`` (NVIDIA, AMD) shares this runner.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from llmserve.attention.backend import AttentionMetadata, ForwardContext
from llmserve.kv_cache.spec import KVCacheConfig
from llmserve.platforms.gpu import GpuPlatform
from llmserve.runner.base import RunnerConfig
from llmserve.runner.model_runner import ModelRunner, StepBatch
from llmserve.scheduler.output import SchedulerOutput
from llmserve.spec_decode.proposer import GraphCapture

logger = logging.getLogger(__name__)

#: Set to 0 to run every step eagerly (debugging, or to compare).
ENV_DISABLE = "LLMSERVE_CUDA_GRAPHS"


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Decode batch sizes to capture: 1, 2, 4, 8, then every 16 up to ``max_num_seqs``
    (which is always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_num_seqs]
    sizes += list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


def padded_size(sizes: list[int], num_seqs: int) -> int | None:
    """The captured size a decode batch of ``num_seqs`` replays at (the smallest ``>=``), or
    None when it is larger than every captured size and runs eagerly."""
    i = bisect.bisect_left(sizes, num_seqs)
    return sizes[i] if i < len(sizes) else None


#: Rows of the staged decode inputs: ids, positions, cache slots, seq lens, state rows.
STAGED_ROWS = 5


def pad_inert(host: torch.Tensor, start: int, end: int, scratch_block: int,
              block_size: int, scratch_state_row: int = 0) -> None:
    """Columns [start, end) of the staged inputs become inert: one token at position 0
    whose K/V lands in the scratch block and whose state is the scratch state row."""
    host[:, start:end] = 0
    host[2, start:end] = scratch_block * block_size
    host[3, start:end] = 1
    host[4, start:end] = scratch_state_row


def stage_decode_inputs(host: torch.Tensor, step: StepBatch, size: int, scratch_block: int,
                        block_size: int, state_slots=None, scratch_state_row: int = 0) -> None:
    """Write a decode step's inputs into the host staging buffer, padded to the captured
    ``size``; one copy then moves every row to the graph's static inputs. ``state_slots``:
    each sequence's state slot (models with state layers)."""
    n = step.num_seqs
    host[0, :n] = torch.from_numpy(step.input_ids)
    host[1, :n] = torch.from_numpy(step.positions)
    host[2, :n] = torch.from_numpy(step.slots)
    host[3, :n] = torch.from_numpy(step.seq_lens)
    if state_slots is not None:
        host[4, :n] = torch.from_numpy(state_slots)
    if size > n:
        pad_inert(host, n, size, scratch_block, block_size, scratch_state_row)


@dataclasses.dataclass
class GraphSet:
    """The graphs of one query length: ``q`` tokens per request, at every captured size.

    Static inputs are read by every replay; the host fills one of two pinned staging buffers
    (used in turn: the previous step's copy may still be queued) and one copy moves them.
    Columns are tokens: request ``i`` owns columns ``i*q .. i*q + q - 1``; row 3 holds the
    per-request sequence lengths and row 4 the state rows in its first ``size`` columns.
    """

    q: int
    static: torch.Tensor
    staging: list
    query_start_loc: torch.Tensor
    block_tables: torch.Tensor
    #: size -> replay() -> (hidden states, auxiliary hidden states or None)
    graphs: dict = dataclasses.field(default_factory=dict)
    turn: int = 0

    def next_staging(self) -> torch.Tensor:
        self.turn ^= 1
        return self.staging[self.turn]


class GraphModelRunner(ModelRunner):
    """``ModelRunner`` with decode steps replayed from graphs; for ``GpuPlatform`` only."""

    def __init__(self, config: RunnerConfig) -> None:
        if not issubclass(config.platform, GpuPlatform):
            raise TypeError(f"GraphModelRunner needs a GpuPlatform (it captures through "
                            f"torch.cuda); platform {config.platform.name!r} is not one")
        super().__init__(config)
        #: Query length -> its graphs (1: decode; k + 1: verification, with speculation).
        self.graph_sets: dict[int, GraphSet] = {}
        self.sizes: list[int] = []
        self.capture_s = 0.0
        self._pool = None
        self._query_starts: dict[int, torch.Tensor] = {}

    def profile_run(self, num_tokens: int, num_seqs: int) -> None:
        # The KV budget is read off the peak; start it from this engine's weights, not from
        # whatever an earlier engine in this process once allocated.
        self.platform.reset_peak_memory()
        super().profile_run(num_tokens, num_seqs)

    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None:
        # One block, and one state row, more than the scheduler knows of: padded graph rows
        # write there.
        has_state = bool(kv_config.state_specs)
        super().initialize_kv_cache(dataclasses.replace(
            kv_config, num_blocks=kv_config.num_blocks + 1,
            num_state_snapshots=kv_config.num_state_snapshots + int(has_state)))
        self.scratch_block = kv_config.num_blocks
        self.scratch_state_row = kv_config.num_state_rows

    # ---- capture --------------------------------------------------------------------------

    def graph_attention_metadata(self, query_len: int, seq_lens: torch.Tensor,
                                 block_tables: torch.Tensor,
                                 slot_mapping: torch.Tensor) -> AttentionMetadata:
        """Metadata of a batch of ``query_len`` tokens per sequence over static device
        tensors, for recording: kernels bound their loops by each sequence's length read
        from memory, and the plan (split-KV factor) is made once for the longest sequence a
        replay can see."""
        num_seqs = len(seq_lens)
        dev = self.device
        md = AttentionMetadata(
            num_tokens=len(slot_mapping),
            num_seqs=num_seqs,
            max_query_len=query_len,
            max_seq_len=self.max_model_len + self.num_speculative_tokens,
            block_size=self.block_size,
            query_start_loc=self._query_start_locs(query_len)[:num_seqs + 1],
            query_lens=torch.full((num_seqs,), query_len, dtype=torch.long, device=dev),
            seq_lens=seq_lens,
            block_tables=block_tables,
            slot_mapping=slot_mapping,
        )
        self.attn_backend.prepare(md)
        return md

    def _query_start_locs(self, q: int) -> torch.Tensor:
        """Offsets of ``q`` tokens per sequence, made once per ``q``: graphs read them."""
        if q not in self._query_starts:
            self._query_starts[q] = torch.arange(self.max_num_seqs + 1, dtype=torch.long,
                                                 device=self.device) * q
        return self._query_starts[q]

    def record(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn`` twice (compile kernels, settle allocations), record its device work
        once on the runner's pool, and return a replay that gives ``fn``'s outputs."""
        for _ in range(2):
            fn()
        self.platform.synchronize()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn()

        def replay(fn=fn):  # fn keeps the static tensors it closes over alive
            graph.replay()
            return out

        return replay

    def warm_up(self) -> None:
        if os.environ.get(ENV_DISABLE, "1") == "0":
            logger.info("CUDA graphs disabled by %s=0", ENV_DISABLE)
            super().warm_up()
            return
        if self.config.engine.parallel.pipeline_parallel_size > 1:
            # Stage-to-stage sends have not been captured and replayed on real GPUs yet.
            logger.info("CUDA graphs are not used with pipeline parallelism yet")
            super().warm_up()
            return
        with self.platform.inference_mode():
            self._capture()

    def _capture(self) -> None:
        t0 = time.monotonic()
        self.sizes = capture_sizes(self.max_num_seqs)
        queries = [1] + ([self.num_speculative_tokens + 1] if self.proposer is not None else [])
        for q in queries:
            self.graph_sets[q] = self._capture_set(q, self.sizes)
        if self.proposer is not None:
            self.proposer.warm_up(GraphCapture(
                sizes=self.sizes, record=self.record,
                attention_metadata=self.graph_attention_metadata,
                scratch_slot=self.scratch_block * self.block_size))
        self.platform.synchronize()
        self.capture_s = time.monotonic() - t0
        logger.info("captured CUDA graphs (decode batch sizes %d..%d%s) in %.2f s",
                    self.sizes[0], self.sizes[-1],
                    f", and {queries[-1]} tokens per request" if len(queries) > 1 else "",
                    self.capture_s)

    def _capture_set(self, q: int, sizes: list[int]) -> GraphSet:
        dev = self.device
        max_size = sizes[-1]
        # Inert verification columns read keys up to k positions past the longest sequence:
        # the table is wide enough for the longest sequence metadata plans for, and its extra
        # columns hold the scratch block.
        width = -(-(self.max_model_len + self.num_speculative_tokens) // self.block_size)
        gs = GraphSet(
            q=q,
            static=torch.zeros(STAGED_ROWS, max_size * q, dtype=torch.long, device=dev),
            staging=[self.platform.host_buffer((STAGED_ROWS, max_size * q), torch.long)
                     for _ in range(2)],
            query_start_loc=self._query_start_locs(q),
            block_tables=torch.full((max_size, width), self.scratch_block, dtype=torch.long,
                                    device=dev))
        for buf in gs.staging:
            self._pad(buf, q, 0, max_size)
        gs.static.copy_(gs.staging[0])
        for size in reversed(sizes):
            md = self.graph_attention_metadata(q, gs.static[3, :size], gs.block_tables[:size],
                                               gs.static[2, :size * q])
            ids, pos = gs.static[0, :size * q], gs.static[1, :size * q]
            state_rows = gs.static[4, :size]

            def forward(md=md, ids=ids, pos=pos, state_rows=state_rows):
                fctx = ForwardContext(md, self.kv_caches,
                                      state_rows if self.has_state_layers else None,
                                      aux_hidden_layers=self.aux_layers)
                out = self.model(ids, pos, fctx)
                aux = torch.cat(fctx.aux_hidden_states, dim=-1) if self.aux_layers else None
                return out, aux

            gs.graphs[size] = self.record(forward)
        return gs

    def _pad(self, host: torch.Tensor, q: int, start: int, end: int) -> None:
        """Requests [start, end) of a ``q``-token staging buffer become inert."""
        pad_inert(host, start * q, end * q, self.scratch_block, self.block_size,
                  self.scratch_state_row)
        host[3, start:end] = q

    # ---- replay ---------------------------------------------------------------------------

    def _replayed(self, num_seqs: int, max_sched: int,
                  decode_only: bool) -> tuple[Optional[GraphSet], Optional[int]]:
        """The graphs and the size a step replays at; (None, None) when it runs eagerly."""
        if decode_only:
            gs = self.graph_sets.get(1)
        else:
            gs = self.graph_sets.get(self.num_speculative_tokens + 1)
            if gs is not None and max_sched > gs.q:
                gs = None
        size = padded_size(self.sizes, num_seqs) if gs is not None else None
        return (gs, size) if size is not None else (None, None)

    def inputs_on_device(self, so: SchedulerOutput, req_ids: list[str]) -> bool:
        counts = [so.num_scheduled_tokens[r] for r in req_ids]
        return self._replayed(len(counts), max(counts), max(counts) == 1)[0] is not None

    def run_model(self, step: StepBatch) -> torch.Tensor:
        n = step.num_seqs
        gs, size = self._replayed(n, int(step.num_sched.max()), step.is_decode_only)
        if gs is None:
            return super().run_model(step)
        q = gs.q
        host = gs.next_staging()
        if q == 1:
            stage_decode_inputs(host, step, size, self.scratch_block, self.block_size,
                                self.batch.state_slot[step.rows] if self.has_state_layers
                                else None, self.scratch_state_row)
            dest = None
        else:
            dest = self._stage_uniform(host, step, size, q)
        gs.static[:, :size * q].copy_(host[:, :size * q], non_blocking=True)
        nb = min(int(-(-int(step.seq_lens.max() + q - 1) // self.block_size)),
                 self.batch.block_table.shape[1])
        gs.block_tables[:n, :nb].copy_(self.upload(self.batch.block_table[step.rows, :nb]),
                                       non_blocking=True)
        if size > n:
            gs.block_tables[n:size, 0] = self.scratch_block
        static = gs.static
        self._fill_device_inputs(step, static[0], static[1], static[2], static[3],
                                 gs.block_tables, dest)
        out, aux = gs.graphs[size]()
        if dest is None:
            self.step_input_ids = static[0, :n]
            if aux is not None:
                self.step_aux_hidden = aux[:n]
            return out[:n]
        index = self.upload(dest)
        self.step_input_ids = static[0][index]
        if aux is not None:
            self.step_aux_hidden = aux[index]
        return out[index]

    def _stage_uniform(self, host: torch.Tensor, step: StepBatch, size: int,
                       q: int) -> np.ndarray:
        """Stage a step of at most ``q`` tokens per request into ``q`` columns each; returns
        each real token's column (the eager layout's order)."""
        n = step.num_seqs
        self._pad(host, q, 0, size)
        starts = step.cu - step.num_sched
        seq_of_token = np.repeat(np.arange(n), step.num_sched)
        dest = seq_of_token * q + (np.arange(step.num_tokens) - starts[seq_of_token])
        cols = torch.from_numpy(dest)
        host[0, cols] = torch.from_numpy(step.input_ids)
        host[1, cols] = torch.from_numpy(step.positions)
        host[2, cols] = torch.from_numpy(step.slots)
        # Each request's length counts its inert columns: its real tokens then sit at their
        # own positions, and the inert ones after them.
        host[3, :n] = torch.from_numpy(step.computed + q)
        return dest
