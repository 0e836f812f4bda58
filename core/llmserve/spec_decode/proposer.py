"""The proposer contract: what a speculative-decoding method implements.

A method is a ``Proposer`` subclass contributed through the ``llmserve_speculative_proposers``
hook and chosen with ``SpeculativeConfig.method``. After every step whose sampled tokens have
reached the host, the runner asks the proposer for up to ``num_speculative_tokens`` draft
tokens per decoding request (``propose``); the scheduler schedules them after the request's
last token, the target scores them all in the next step's forward, and the runner keeps the
longest prefix the rejection sampler accepts (``llmserve.spec_decode.rejection``) plus one
token of the target's own. Drafts are deterministic (the proposer picks them; it does not
sample them), so verification is exact for greedy and for sampled requests alike.

A proposer that runs a model of its own keeps that model's paged KV cache in the engine's
blocks: ``cache_specs`` adds its layers to the KV plan, the layers share the target's block
tables (so prefix caching and preemption need nothing extra), and ``needs_lookahead`` makes
the scheduler allocate ``num_speculative_tokens`` slots past the verified tokens for the
draft's own steps.

A proposer that reads the target's hidden states (EAGLE) sets ``observes_target``: after every
target forward, before sampling, ``observe`` gets a ``TargetStep`` with the hidden states of
every token the step computed, and the inputs of the decoder layers ``target_layers()``
names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from llmserve.attention.backend import AttentionMetadata
from llmserve.config import SpeculativeConfig
from llmserve.kv_cache.spec import CacheSpec


@dataclass(frozen=True)
class ProposerContext:
    """What a proposer is built from: the settings, the target and the runner's services."""

    config: SpeculativeConfig
    #: The target model's directory and its ``config.json``.
    target_model: str
    target_hf_config: Mapping[str, Any]
    device: torch.device
    dtype: torch.dtype
    block_size: int
    max_model_len: int
    max_num_seqs: int
    #: "auto" reads checkpoints; "dummy" fills random weights (benchmarks): a draft model
    #: is loaded the same way as the target.
    load_format: str
    #: ``load_model(path, hf_config=None)`` builds the model of an HF directory with an
    #: installed architecture, on the device, with the engine's attention backend and layer
    #: ops, weights loaded per ``load_format``; ``hf_config`` replaces the directory's
    #: ``config.json`` (a head whose config names the target's architecture).
    load_model: Callable[..., torch.nn.Module]
    #: ``attention_metadata(query_lens, seq_lens, slots, block_tables)`` over a flat batch:
    #: per sequence the new tokens and the length after them, per token its cache slot,
    #: per sequence its block-table row (numpy); prepared by the engine's backend.
    attention_metadata: Callable[..., AttentionMetadata]
    #: A host array on the device without blocking the host.
    upload: Callable[[np.ndarray], torch.Tensor]
    #: The platform's inference-mode context for forward passes.
    inference_mode: Callable[[], AbstractContextManager]
    #: The loaded target model (a ``CausalLM``): share its modules read-only, e.g. its
    #: ``compute_logits`` and, where the architecture has it, ``embed_input_ids``.
    target: Optional[torch.nn.Module] = None


@dataclass(frozen=True)
class GraphCapture:
    """What a proposer needs to record its own steps as device graphs (CUDA/HIP graphs),
    handed to ``Proposer.warm_up`` by runners that replay graphs.

    A recorded function reads and writes only tensors that exist before it is recorded
    (static inputs the proposer fills before each replay) or that it allocates itself; its
    host code runs only while recording, so every choice it makes must not depend on the
    values of a particular step.
    """

    #: Batch sizes the target recorded; a batch of ``n`` replays at the smallest ``>= n``.
    sizes: list[int]
    #: ``record(fn)`` runs ``fn`` (compiling kernels), records its device work once, and
    #: returns ``replay()``, which re-runs that work and returns ``fn``'s outputs (the same
    #: tensors every time).
    record: Callable[[Callable[[], Any]], Callable[[], Any]]
    #: ``attention_metadata(query_len, seq_lens, block_tables, slot_mapping)`` over static
    #: device tensors: ``query_len`` tokens per sequence, planned for any length up to
    #: ``max_model_len + num_speculative_tokens``.
    attention_metadata: Callable[..., AttentionMetadata]
    #: A cache slot no request owns: inert tokens write their K/V there.
    scratch_slot: int


@dataclass(frozen=True)
class TargetStep:
    """One forward of the target, as a proposer that ``observes_target`` sees it.

    Per request of the step (numpy): its runner row, the tokens its KV cache held before the
    step (the position of its first new token) and the tokens the step computed, which sit
    at ``query_start[i] ..`` of the flat batch. Drafts verified this step are included: which
    of them were accepted is known only at the next ``propose``. The tensors are valid
    during the call: copy what is kept.
    """

    rows: np.ndarray
    computed: np.ndarray
    num_scheduled: np.ndarray
    query_start: np.ndarray
    #: The runner's token table (read it, do not write it) and each request's known tokens:
    #: row ``r`` holds ``num_tokens`` final ids, then the drafts this step verifies.
    token_ids: np.ndarray
    num_tokens: np.ndarray
    #: [num_tokens, hidden] the target's final hidden states (what ``compute_logits`` reads).
    hidden_states: torch.Tensor
    #: [num_tokens, len(target_layers()) * hidden] the inputs of those decoder layers,
    #: concatenated in order; None when ``target_layers()`` is empty.
    aux_hidden_states: Optional[torch.Tensor] = None


@dataclass
class ProposalBatch:
    """The requests that may take drafts now, with everything known about them on the host.

    Arrays are per request unless noted; ``token_ids`` and ``block_table`` are the runner's
    own tables (read them, do not write them), indexed by ``rows``.
    """

    req_ids: list[str]
    #: Each request's row in the runner's tables (stable while the request runs).
    rows: np.ndarray
    #: [max_num_seqs, max_model_len] token ids; row r holds ``num_tokens`` valid ids.
    token_ids: np.ndarray
    #: Tokens known, the one just sampled included (it is not in the KV cache yet).
    num_tokens: np.ndarray
    #: Drafts each request may take (0..k): room before max_model_len and max_tokens.
    max_drafts: np.ndarray
    #: [max_num_seqs, max_blocks] block ids; covers ``num_tokens - 1 + k`` positions when
    #: the proposer ``needs_lookahead``.
    block_table: np.ndarray


@dataclass
class PendingProposalBatch:
    """Requests to draft for before the previous step's tokens reach the host (asynchronous
    scheduling): their newest tokens, and how many there are, exist only on the device.

    A request's tokens are its ``num_known`` final ids in ``token_ids``, then the first
    ``num_pending_emitted[i]`` of ``pending_tokens[i]`` (what the step still in flight
    emits: one sampled token, or a verification's accepted drafts and one more; at most
    ``num_pending[i]``, 0 where the request was not in that step).
    """

    req_ids: list[str]
    rows: np.ndarray
    #: [max_num_seqs, max_model_len] the runner's token table (read it, do not write it).
    token_ids: np.ndarray
    num_known: np.ndarray
    #: The most tokens the step in flight adds per request (host; 0: none).
    num_pending: np.ndarray
    #: [n, >= max(num_pending)] and [n], on the device.
    pending_tokens: torch.Tensor
    num_pending_emitted: torch.Tensor
    #: Exactly the drafts scheduled per request (1..k): the step's inputs read that many.
    max_drafts: np.ndarray
    #: [max_num_seqs, max_blocks] block ids, covering every pending token and k lookahead
    #: slots past them.
    block_table: np.ndarray


class Proposer(ABC):
    """A speculative-decoding method. Built once per engine with a ``ProposerContext``.

    Order of calls: ``__init__``, ``load``, ``cache_specs``, ``bind_kv_cache`` (its layers'
    caches, planned with the target's), ``warm_up``, then per step ``add_request`` for each
    request the runner (re)builds, ``observe`` after the target's forward (``observes_target`` only)
    and ``propose`` for the decoding requests (``propose_pending`` in its place, under
    asynchronous scheduling, where the proposer drafts on the device).
    """

    #: Whether drafting writes the KV of positions past the verified tokens (a draft model
    #: decoding its own drafts): the scheduler then allocates ``num_speculative_tokens``
    #: lookahead slots per request.
    needs_lookahead: ClassVar[bool] = False
    #: Whether ``observe`` is called after every target forward (EAGLE reads the hidden
    #: states).
    observes_target: ClassVar[bool] = False

    def __init__(self, context: ProposerContext) -> None:
        self.context = context
        self.k = context.config.num_speculative_tokens

    def load(self) -> None:
        """Load weights or build tables; called once before serving."""

    def cache_specs(self) -> list[CacheSpec]:
        """Paged layers this proposer keeps; they share the target's block tables."""
        return []

    def bind_kv_cache(self, caches: list) -> None:
        """Receive the caches of ``cache_specs`` (same order, same layouts as the target's)."""

    def add_request(self, row: int, num_computed_tokens: int) -> None:
        """A request (new, or resumed after preemption) now owns ``row``; its first
        ``num_computed_tokens`` tokens are in the KV cache (a prefix hit), and the rest will
        be computed again."""

    def warm_up(self, graphs: Optional[GraphCapture]) -> None:
        """Called once with the caches bound, before serving; ``graphs`` where the runner
        records device graphs (after its own), None elsewhere."""

    def target_layers(self) -> tuple[int, ...]:
        """Decoder layers whose inputs ``TargetStep.aux_hidden_states`` should carry (EAGLE-3
        reads three); the target's architecture must set ``supports_aux_hidden_states``."""
        return ()

    def observe(self, step: TargetStep) -> None:
        """The target's forward of a step, before its sampling (``observes_target`` only)."""

    def propose_pending(self, batch: PendingProposalBatch) -> Optional[torch.Tensor]:
        """Drafts made on the device without waiting for the step in flight (asynchronous
        scheduling): ``[n, >= max(max_drafts)]`` int64 on the device, of which request ``i``
        uses its first ``max_drafts[i]``; the tensor must hold them until the next call.
        None (the default) means "wait for the tokens and call ``propose``": correct, with
        the host waiting once per step."""
        return None

    @abstractmethod
    def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
        """Draft tokens per request of ``batch`` (int64 arrays, each at most
        ``batch.max_drafts[i]`` long; empty means "decode one token as usual")."""
