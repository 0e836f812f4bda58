"""``{"method": "eagle" | "eagle3", "model": DIR}``: a draft head that reads the target's hidden
states (``llmserve.models.eagle``) drafts greedily.

The head's input at position ``p`` pairs token ``p + 1`` with the target's hidden state at
``p``, so a position can be fed only once its next token is final: which drafts a
verification accepted is known only at the next ``propose``. ``observe`` therefore keeps the
head's input features of every position the target computed (flat, tagged with row and
position; a recomputed position replaces the older copy), and ``propose`` runs the head over
the kept positions of each drafting request up to its last known token (the whole prompt the
first time, then the tokens verified since) in one flat forward, which also drafts the first
token; each further draft is one batched decode step fed the head's own hidden state. The
head keeps its paged KV cache in the engine's blocks under the target's block tables, like a
draft model; positions the target did not compute for a request (prefix-cache hits) keep
whatever the head's cache holds there, which affects acceptance, never the output.

With the embedded default model as the target and no ``model``, the EAGLE-1 head shipped
next to it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.models.eagle import EAGLE3_ARCHITECTURES, EAGLE_ARCHITECTURE, eagle3_aux_layers
from llmserve.models.loader import read_hf_config
from llmserve.spec_decode.draft_model import flat_batch_metadata, place_drafts
from llmserve.spec_decode.proposer import (GraphCapture, ProposalBatch, Proposer,
                                           ProposerContext, TargetStep)
from llmserve.spec_decode.recorded import RecordedDrafting

#: Positions kept per request between proposals. A request that never drafts (penalties, a
#: grammar) would otherwise keep one per step; past this its oldest are dropped, and the
#: head's cache there stays stale should it draft later.
MAX_KEPT_POSITIONS = 2048


def default_eagle_model(target_model: str, method: str) -> str:
    """The shipped EAGLE-1 head of the embedded default model; other targets must name theirs."""
    from llmserve import default_model

    head = getattr(default_model, "EAGLE_MODEL_PATH", None)
    if method == "eagle" and head is not None and Path(target_model).resolve() == Path(
            default_model.DEFAULT_MODEL_PATH).resolve():
        return str(head)
    raise ValueError(f"speculative_config.model is required for method {method!r} (the "
                     "EAGLE head's HF directory); only the embedded default model has a "
                     "shipped head (EAGLE-1)")


class EagleProposer(Proposer):
    """EAGLE-1: the head reads the target's final hidden states."""

    needs_lookahead = True
    observes_target = True
    method = "eagle"
    architecture = EAGLE_ARCHITECTURE

    def __init__(self, context: ProposerContext) -> None:
        super().__init__(context)
        self.path = context.config.model or default_eagle_model(context.target_model,
                                                                self.method)
        self.head_config = read_hf_config(self.path)
        self._check_config(self.head_config, context.target_hf_config)
        self.head = None
        self.kv_caches: list = []
        # The kept features: per entry its runner row and position, and a [n, hidden] row.
        self.kept_rows = np.zeros(0, dtype=np.int64)
        self.kept_positions = np.zeros(0, dtype=np.int64)
        self.kept_features: torch.Tensor | None = None
        self.recorded: RecordedDrafting | None = None

    def _check_config(self, head: dict, target: dict) -> None:
        archs = head.get("architectures") or []
        is_eagle3 = any(a in EAGLE3_ARCHITECTURES for a in archs)
        if is_eagle3 != (self.method == "eagle3"):
            kind, method = ("EAGLE-3", "eagle3") if is_eagle3 else ("EAGLE-1", "eagle")
            raise ValueError(f"{self.path} is an {kind} head (architectures {archs}); use "
                             f"method {method!r}")
        for key in ("hidden_size", "vocab_size"):
            if int(head[key]) != int(target[key]):
                raise ValueError(f"the EAGLE head's {key} ({head[key]}, {self.path}) must "
                                 f"equal the target's ({target[key]})")

    def load(self) -> None:
        # EAGLE-1 configs often name LlamaForCausalLM, which would build the target's class.
        self.head = self.context.load_model(
            self.path, {**self.head_config, "architectures": [self.architecture]})
        self.head.share_target(self.context.target)
        self.kept_features = torch.zeros(0, self.head_config["hidden_size"],
                                         dtype=self.context.dtype, device=self.context.device)

    def cache_specs(self) -> list[CacheSpec]:
        return self.head.cache_specs(self.context.block_size)

    def bind_kv_cache(self, caches: list) -> None:
        self.kv_caches = caches

    def warm_up(self, graphs: GraphCapture | None) -> None:
        if graphs is not None and self.k > 1:
            self.recorded = RecordedDrafting(self, graphs,
                                             feature_size=int(self.head_config["hidden_size"]))

    def draft_step(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   fctx: ForwardContext, features: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(input_ids, positions, fctx, features)

    def draft_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.draft_tokens(hidden)

    def add_request(self, row: int, num_computed_tokens: int) -> None:
        with self.context.inference_mode():
            self._keep(self.kept_rows != row)

    def target_features(self, step: TargetStep) -> torch.Tensor:
        return step.hidden_states

    def observe(self, step: TargetStep) -> None:
        # A position computed again (after a rejected draft) replaces what was kept for it.
        first_new = np.full(self.context.max_num_seqs, np.iinfo(np.int64).max)
        first_new[step.rows] = step.computed
        order = np.repeat(np.arange(len(step.rows)), step.num_scheduled)
        offsets = np.arange(len(order)) - np.repeat(step.query_start, step.num_scheduled)
        with self.context.inference_mode():
            self._keep(self.kept_positions < first_new[self.kept_rows])
            features = self.head.project_target(self.target_features(step)[:len(order)])
            self.kept_rows = np.concatenate([self.kept_rows, step.rows[order]])
            self.kept_positions = np.concatenate([self.kept_positions,
                                                  step.computed[order] + offsets])
            self.kept_features = torch.cat([self.kept_features, features])
            counts = np.bincount(self.kept_rows, minlength=self.context.max_num_seqs)
            if counts.max() > MAX_KEPT_POSITIONS:
                oldest = self._last_kept() - MAX_KEPT_POSITIONS + 1
                self._keep(self.kept_positions >= oldest[self.kept_rows])

    def _last_kept(self) -> np.ndarray:
        last = np.full(self.context.max_num_seqs, -1, dtype=np.int64)
        np.maximum.at(last, self.kept_rows, self.kept_positions)
        return last

    def _keep(self, mask: np.ndarray) -> None:
        if mask.all():
            return
        self.kept_rows, self.kept_positions = self.kept_rows[mask], self.kept_positions[mask]
        self.kept_features = self.kept_features[self.context.upload(np.nonzero(mask)[0])]

    def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
        drafts = [batch.token_ids[0, :0]] * len(batch.req_ids)
        # Position p can be fed once token p + 1 is known: up to num_tokens - 2.
        limit = np.full(self.context.max_num_seqs, -1, dtype=np.int64)
        drafting = batch.max_drafts > 0
        limit[batch.rows[drafting]] = batch.num_tokens[drafting] - 2
        feed = np.nonzero(self.kept_positions <= limit[self.kept_rows])[0]
        # The kept positions of a row are consecutive; it drafts if they reach its limit.
        count = np.bincount(self.kept_rows[feed], minlength=len(limit))
        last = np.full(len(limit), -1, dtype=np.int64)
        np.maximum.at(last, self.kept_rows[feed], self.kept_positions[feed])
        ready = drafting & (last[batch.rows] == limit[batch.rows]) & (count[batch.rows] > 0)
        active = np.nonzero(ready)[0]
        rows = batch.rows[active]
        rank = np.full(len(limit), -1, dtype=np.int64)
        rank[rows] = np.arange(len(rows))
        feed = feed[rank[self.kept_rows[feed]] >= 0]
        feed = feed[np.lexsort((self.kept_positions[feed], rank[self.kept_rows[feed]]))]
        positions = self.kept_positions[feed]
        token_rows = self.kept_rows[feed]
        ctx = self.context
        with ctx.inference_mode():
            features = self.kept_features[ctx.upload(feed)]
            self._keep(limit[self.kept_rows] < 0)  # the rest of a drafting row's is stale
        if not len(active):
            return drafts
        num_tokens = batch.num_tokens[active]
        max_drafts = batch.max_drafts[active]
        lens = count[rows]
        recorded = self.recorded
        if recorded is not None and len(rows) <= recorded.sizes[-1]:
            table = self._replay(batch, rows, positions, lens, features, max_drafts)
            for i, a in enumerate(active.tolist()):
                drafts[a] = table[i, :max_drafts[i]]
            return drafts
        with ctx.inference_mode():
            input_ids = ctx.upload(batch.token_ids[token_rows, positions + 1])
            logit_hidden, hidden = self._forward(batch, rows, input_ids, positions, lens,
                                                 num_tokens - 1, features)
            last_idx = ctx.upload(np.cumsum(lens) - 1)
            token = self.head.draft_tokens(logit_hidden[last_idx])
            hidden = hidden[last_idx]
            steps = [(np.arange(len(rows)), token)]
            for j in range(1, int(max_drafts.max())):
                prev_idx, prev = steps[-1]
                keep = np.nonzero(max_drafts[prev_idx] > j)[0]
                keep_t = ctx.upload(keep)
                idx = prev_idx[keep]
                pos = num_tokens[idx] - 2 + j
                logit_hidden, hidden = self._forward(
                    batch, rows[idx], prev[keep_t], pos, np.ones(len(idx), dtype=np.int64),
                    pos + 1, hidden[keep_t])
                steps.append((idx, self.head.draft_tokens(logit_hidden)))
            host = torch.cat([t for _, t in steps]).cpu().numpy()
        return place_drafts(drafts, active, [idx for idx, _ in steps], host, max_drafts)

    def _replay(self, batch: ProposalBatch, rows: np.ndarray, positions: np.ndarray,
                lens: np.ndarray, features: torch.Tensor, max_drafts: np.ndarray) -> np.ndarray:
        """The recorded proposal over each row's last ``k + 1`` fed positions; the head's
        cache before them (a new prompt's) is written eagerly first."""
        ctx, q = self.context, self.recorded.q
        first = np.cumsum(lens) - lens
        start = positions[first]
        cut = np.maximum(lens - q, 0)
        if cut.any():
            seq_of = np.repeat(np.arange(len(rows)), lens)
            ahead = (np.arange(len(positions)) - first[seq_of]) < cut[seq_of]
            longs = np.nonzero(cut)[0]
            flat = np.nonzero(ahead)[0]
            with ctx.inference_mode():
                index = ctx.upload(flat)
                self._forward(batch, rows[longs],
                              ctx.upload(batch.token_ids[rows[seq_of[flat]],
                                                         positions[flat] + 1]),
                              positions[flat], cut[longs], start[longs] + cut[longs],
                              features[index])
                features = features[ctx.upload(np.nonzero(~ahead)[0])]
        return self.recorded.replay(batch, rows, start + cut, lens - cut, max_drafts, features,
                                    id_offset=1)

    def _forward(self, batch: ProposalBatch, rows: np.ndarray, input_ids: torch.Tensor,
                 positions: np.ndarray, query_lens: np.ndarray, seq_lens: np.ndarray,
                 features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head over a flat batch: ``query_lens[i]`` tokens of row ``rows[i]`` ending at
        length ``seq_lens[i]``, at ``positions``, with their hidden-state inputs."""
        ctx = self.context
        md = flat_batch_metadata(ctx, batch, rows, positions, query_lens, seq_lens)
        return self.head(input_ids, ctx.upload(positions), ForwardContext(md, self.kv_caches),
                         features)


class Eagle3Proposer(EagleProposer):
    """EAGLE-3: the head reads the inputs of three target decoder layers."""

    method = "eagle3"
    architecture = EAGLE3_ARCHITECTURES[0]

    def _check_config(self, head: dict, target: dict) -> None:
        super()._check_config(head, target)
        num_layers = int(target["num_hidden_layers"])
        self.aux_layers = eagle3_aux_layers(head, num_layers)
        ids = list(self.aux_layers)
        if ids != sorted(set(ids)) or not all(0 <= i < num_layers for i in ids):
            raise ValueError(f"the EAGLE-3 head's aux layers {ids} ({self.path}) must be "
                             f"increasing layer ids of the target's {num_layers} layers; "
                             "set eagle_config.eagle_aux_hidden_state_layer_ids")

    def target_layers(self) -> tuple[int, ...]:
        return self.aux_layers

    def target_features(self, step: TargetStep) -> torch.Tensor:
        return step.aux_hidden_states
