"""The GPU runner: CUDA graphs for decode steps, memory profiling for the KV budget.

A decode step launches a few hundred small kernels; at batch 1 launching them costs more
than running them. Each captured graph replays the whole forward of a decode batch of one
fixed size from static input buffers. A step of ``n`` requests uses the smallest captured
size ``>= n``; the extra rows write their K/V into a scratch block that belongs to no request,
advance a scratch state row (models with per-request state layers) and their outputs are
dropped. Prefill and mixed steps run eagerly.

Capture and replay go through ``torch.cuda``, which ROCm builds of torch implement too (as
HIP graphs), so every ``GpuPlatform`` (NVIDIA, AMD) shares this runner.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import time

import torch

from llmserve.attention.backend import AttentionMetadata, ForwardContext
from llmserve.kv_cache.spec import KVCacheConfig
from llmserve.platforms.gpu import GpuPlatform
from llmserve.runner.base import RunnerConfig
from llmserve.runner.model_runner import ModelRunner, StepBatch

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


class GraphModelRunner(ModelRunner):
    """``ModelRunner`` with decode steps replayed from graphs; for ``GpuPlatform`` only."""

    def __init__(self, config: RunnerConfig) -> None:
        if not issubclass(config.platform, GpuPlatform):
            raise TypeError(f"GraphModelRunner needs a GpuPlatform (it captures through "
                            f"torch.cuda); platform {config.platform.name!r} is not one")
        super().__init__(config)
        #: size -> (graph, hidden states, auxiliary hidden states or None)
        self.graphs: dict[int, tuple] = {}
        self.sizes: list[int] = []
        self.capture_s = 0.0

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

    def _static_metadata(self, size: int) -> AttentionMetadata:
        md = AttentionMetadata(
            num_tokens=size,
            num_seqs=size,
            max_query_len=1,
            # Kernels bound their loops by each sequence's length read from memory; the
            # plan (split-KV factor) is made once for the longest sequence possible.
            max_seq_len=self.max_model_len,
            block_size=self.block_size,
            query_start_loc=self.query_start_loc[:size + 1],
            query_lens=self.query_lens[:size],
            seq_lens=self.static[3, :size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.static[2, :size],
        )
        self.attn_backend.prepare(md)
        return md

    def warm_up(self) -> None:
        if os.environ.get(ENV_DISABLE, "1") == "0":
            logger.info("CUDA graphs disabled by %s=0", ENV_DISABLE)
            return
        with self.platform.inference_mode():
            self._capture()

    def _capture(self) -> None:
        t0 = time.monotonic()
        dev = self.device
        self.sizes = capture_sizes(self.max_num_seqs)
        max_size = self.sizes[-1]
        max_blocks = self.batch.block_table.shape[1]
        # Rows: STAGED_ROWS (one host->device copy per step).
        self.static = torch.zeros(STAGED_ROWS, max_size, dtype=torch.long, device=dev)
        # Two pinned staging buffers used in turn: with asynchronous scheduling the host fills
        # step N+1's while step N's copy may still be queued on the device.
        self.staging = [self.platform.host_buffer((STAGED_ROWS, max_size), torch.long)
                        for _ in range(2)]
        self.static_host = self.staging[0]
        self.query_start_loc = torch.arange(max_size + 1, dtype=torch.long, device=dev)
        self.query_lens = torch.ones(max_size, dtype=torch.long, device=dev)
        self.block_tables = torch.full((max_size, max_blocks), self.scratch_block,
                                       dtype=torch.long, device=dev)
        for buf in self.staging:
            pad_inert(buf, 0, max_size, self.scratch_block, self.block_size,
                      self.scratch_state_row)
        self.static[4] = self.scratch_state_row
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            md = self._static_metadata(size)
            ids, pos = self.static[0, :size], self.static[1, :size]

            def forward():
                fctx = ForwardContext(md, self.kv_caches,
                                      self.static[4, :size] if self.has_state_layers else None,
                                      aux_hidden_layers=self.aux_layers)
                out = self.model(ids, pos, fctx)
                aux = torch.cat(fctx.aux_hidden_states, dim=-1) if self.aux_layers else None
                return out, aux

            for _ in range(2):  # compile kernels and settle allocations outside the capture
                forward()
            self.platform.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out, aux = forward()
            self.graphs[size] = (graph, out, aux)
        self.platform.synchronize()
        self.capture_s = time.monotonic() - t0
        logger.info("captured %d CUDA graphs (decode batch sizes %d..%d) in %.2f s",
                    len(self.sizes), self.sizes[0], max_size, self.capture_s)

    # ---- replay ---------------------------------------------------------------------------

    def run_model(self, step: StepBatch) -> torch.Tensor:
        n = step.num_seqs
        size = padded_size(self.sizes, n) if self.graphs and step.is_decode_only else None
        if size is None:
            return super().run_model(step)
        self.static_host = self.staging[1] if self.static_host is self.staging[0] \
            else self.staging[0]
        host = self.static_host
        stage_decode_inputs(host, step, size, self.scratch_block, self.block_size,
                            self.batch.state_slot[step.rows] if self.has_state_layers else None,
                            self.scratch_state_row)
        self.static[:, :size].copy_(host[:, :size], non_blocking=True)
        self._fill_pending_inputs(self.static[0, :size], step)
        nb = int(-(-int(step.seq_lens.max()) // self.block_size))
        self.block_tables[:n, :nb].copy_(self.upload(self.batch.block_table[step.rows, :nb]),
                                         non_blocking=True)
        if size > n:
            self.block_tables[n:size, 0] = self.scratch_block
        graph, out, aux = self.graphs[size]
        graph.replay()
        if aux is not None:
            self.step_aux_hidden = aux[:n]
        return out[:n]
