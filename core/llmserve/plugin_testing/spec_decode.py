"""Conformance checks for speculative-decoding proposers (the ``llmserve_speculative_proposers``
hook).

``check_proposer`` runs a model with and without the proposer on prompts of several lengths,
greedy, and asserts what every method must guarantee: the same tokens, drafts no longer
than ``ProposalBatch.max_drafts`` and of integer dtype, and no KV block left held. The
proposer runs twice: with synchronous scheduling on the CPU, and with asynchronous scheduling
through the graph runner's replay paths on the CPU (``plugin_testing.eager_replay``), where
``propose_pending`` is called (its drafts must be an integer tensor with a row per request
and at least ``max(max_drafts)`` columns). It returns
the acceptance counts, so a plugin's test can also assert that its method drafts something
useful::

    from llmserve.plugin_testing.spec_decode import check_proposer

    def test_my_proposer(tiny_model_dir):
        stats = check_proposer(MyProposer, tiny_model_dir, num_speculative_tokens=3)
        assert stats["spec_decode_num_drafts"] > 0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmserve import hookimpl
from llmserve.config import EngineArgs
from llmserve.sampling_params import SamplingParams
import torch

from llmserve.spec_decode.proposer import PendingProposalBatch, ProposalBatch, Proposer

#: Prompt lengths: one token, inside a block, across blocks; the last one repeats itself.
PROMPTS = [[7], [5, 9, 11, 30], list(range(20, 60)), [40, 41, 42, 43] * 8]
NAME = "under-test"


def check_proposer(proposer_cls: type[Proposer], model_dir: str,
                   num_speculative_tokens: int = 3, new_tokens: int = 24,
                   **spec_options: Any) -> dict:
    """Greedy tokens with ``proposer_cls`` equal those without, under synchronous and
    asynchronous scheduling; returns the synchronous engine's speculative-decoding counters.
    ``spec_options`` are further ``SpeculativeConfig`` fields (``model``,
    ``prompt_lookup_max``...)."""
    from llmserve.engine.llm_engine import LLMEngine
    from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
    from llmserve.plugin_testing.eager_replay import EagerReplayPlatform

    if not (isinstance(proposer_cls, type) and issubclass(proposer_cls, Proposer)):
        raise TypeError(f"{proposer_cls!r} is not a subclass of "
                        "llmserve.spec_decode.proposer.Proposer")
    checked = _checked(proposer_cls)

    class Plugin:
        LLMSERVE_PLUGIN_API = ">=1.4,<2"

        @hookimpl
        def llmserve_speculative_proposers(self):
            return {NAME: checked}

        @hookimpl
        def llmserve_platforms(self):
            return [EagerReplayPlatform]

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    spec = {"method": NAME, "num_speculative_tokens": num_speculative_tokens, **spec_options}
    runs = [dict(speculative_config=None), dict(speculative_config=spec),
            dict(speculative_config=spec, device=EagerReplayPlatform.name,
                 async_scheduling=True)]
    results, stats = [], None
    pm = fresh_plugin_manager()
    with registered_plugin(pm, Plugin(), NAME):
        for run in runs:
            engine = LLMEngine(EngineArgs(model=model_dir, dtype="float32", max_model_len=256,
                                          **run), pm)
            for i, p in enumerate(PROMPTS):
                engine.add_request(f"p{i}", p, params)
            tokens: dict[str, list[int]] = {}
            while engine.has_unfinished_requests():
                for out in engine.step():
                    tokens[out.request_id] = list(out.outputs[0].token_ids)
            results.append([tokens[f"p{i}"] for i in range(len(PROMPTS))])
            core = engine.core
            assert core.kv_manager.usage == 0.0, "KV blocks still held after every request ended"
            if stats is None and run["speculative_config"] is not None:
                stats = core.stats()
    plain = results[0]
    for run, speculative in zip(runs[1:], results[1:]):
        mode = "asynchronous" if run.get("async_scheduling") else "synchronous"
        for i, (want, got) in enumerate(zip(plain, speculative)):
            assert got == want, (f"prompt {i}: greedy tokens differ with "
                                 f"{proposer_cls.__name__} ({mode} scheduling): {got} != {want}")
    return stats


def _checked(proposer_cls: type[Proposer]) -> type[Proposer]:
    """``proposer_cls`` with its drafts checked against the batch they answer."""

    class Checked(proposer_cls):
        def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
            drafts = super().propose(batch)
            assert len(drafts) == len(batch.req_ids), (
                f"propose returned {len(drafts)} draft arrays for {len(batch.req_ids)} requests")
            for i, d in enumerate(drafts):
                d = np.asarray(d)
                assert d.ndim == 1 and np.issubdtype(d.dtype, np.integer), (
                    f"drafts of request {i} must be a 1-D integer array, got {d.dtype} "
                    f"{d.shape}")
                assert len(d) <= batch.max_drafts[i], (
                    f"request {i} got {len(d)} drafts, more than max_drafts "
                    f"{batch.max_drafts[i]}")
            return drafts

        def propose_pending(self, batch: PendingProposalBatch):
            drafts = super().propose_pending(batch)
            if drafts is not None:
                assert isinstance(drafts, torch.Tensor) and not drafts.is_floating_point(), (
                    f"propose_pending must return an integer tensor or None, got {drafts!r}")
                assert drafts.dim() == 2 and drafts.shape[0] == len(batch.req_ids) and \
                    drafts.shape[1] >= int(batch.max_drafts.max()), (
                        f"propose_pending returned {tuple(drafts.shape)} drafts for "
                        f"{len(batch.req_ids)} requests of up to {int(batch.max_drafts.max())}")
            return drafts

    Checked.__name__ = Checked.__qualname__ = proposer_cls.__name__
    return Checked
