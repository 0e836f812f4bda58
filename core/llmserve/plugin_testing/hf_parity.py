"""HF parity harness for model plugins: the method llmserve's own models are tested with.

Greedy decoding, a fixed number of new tokens, top-k logprobs. Token ids must be identical;
where two candidates are within rounding, a divergence is accepted only if each side's token
is in the other's top-k, and comparison stops there. Logprobs agree to ``tol``.

A model plugin's test builds a tiny checkpoint with HF transformers, runs our engine and
``hf_greedy_reference`` on the same prompts, and calls ``assert_greedy_matches`` per prompt::

    refs = hf_greedy_reference(model_dir, prompts)
    outs = LLM(model_dir, dtype="float32").generate(prompts, greedy_params())
    for i, out in enumerate(outs):
        assert_greedy_matches(out.outputs[0], refs[i], f"prompt{i}")

Needs torch and transformers (test dependencies of the plugin, not of llmserve).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.sampling_params import SamplingParams

NEW_TOKENS = 32
TOP = 5
LOGPROB_TOL = 1e-3


@dataclass
class GreedyReference:
    """HF's greedy continuation of one prompt: token ids, and per step the top-k (ids, lps)."""

    token_ids: list[int]
    top: list[tuple[list[int], list[float]]]


def greedy_params(new_tokens: int = NEW_TOKENS, top: int = TOP) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=new_tokens, logprobs=top,
                          ignore_eos=True)


def parity_prompts(vocab_size: int, lengths=(1, 5, 15, 16, 17, 33, 48, 70),
                   seed: int = 1234) -> list[list[int]]:
    """Random prompts of ``lengths`` tokens (ids from 4 on: clear of special tokens), plus
    two sharing a 40-token prefix, so one batch exercises prefix-cache hits."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, vocab_size, (n,), generator=g).tolist() for n in lengths]
    shared = torch.randint(4, vocab_size, (40,), generator=g).tolist()
    return prompts + [shared + [7, 8, 9], shared + [10, 11]]


def hf_greedy_reference(model_dir: str, prompts: list[list[int]], new_tokens: int = NEW_TOKENS,
                        top: int = TOP, use_cache: bool = True) -> list[GreedyReference]:
    """Greedy continuations by HF transformers in float32, one prompt at a time, through its
    own KV cache (so its sliding-window and other cache rules apply).

    ``use_cache=False`` runs the whole sequence again at every step instead: the reference
    for models whose HF cache keyword differs between transformers releases (state-space
    models: a cache passed under a name the release ignores silently drops the state).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for prompt in prompts:
            sequence, step_input, past = list(prompt), torch.tensor([prompt]), None
            tokens, tops = [], []
            for _ in range(new_tokens):
                if use_cache:
                    out = model(step_input, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                else:
                    out = model(torch.tensor([sequence]), use_cache=False)
                lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                best = torch.topk(lp, top)
                nxt = int(best.indices[0])
                tokens.append(nxt)
                tops.append((best.indices.tolist(), best.values.tolist()))
                sequence.append(nxt)
                step_input = torch.tensor([[nxt]])
            results.append(GreedyReference(tokens, tops))
    return results


def assert_greedy_matches(ours, reference: GreedyReference, label: str,
                          tol: float = LOGPROB_TOL) -> None:
    """``ours`` is a ``CompletionOutput`` of ``greedy_params()``; raises AssertionError on
    the first real divergence, naming ``label`` and the step."""
    top = len(reference.top[0][0])
    assert len(ours.token_ids) == len(reference.token_ids), label
    for t, (tok, ref_tok) in enumerate(zip(ours.token_ids, reference.token_ids)):
        our_pos = ours.logprobs[t]
        our_top = sorted((lp.rank, tid, lp.logprob) for tid, lp in our_pos.items()
                         if lp.rank is not None and lp.rank <= top)
        ref_ids, ref_lps = reference.top[t]
        if tok != ref_tok:
            our_top_ids = [tid for _, tid, _ in our_top]
            assert tok in ref_ids and ref_tok in our_top_ids, (
                f"{label}: token {t} diverged ({tok} vs HF {ref_tok}) beyond a near-tie")
            return
        # Compare the top-k values position by position (ids may swap only within rounding).
        ours_vals = [lp for _, _, lp in our_top][:top]
        assert len(ours_vals) == top, f"{label}: token {t} has {len(ours_vals)} top logprobs"
        for a, b in zip(ours_vals, ref_lps):
            assert abs(a - b) < tol, f"{label}: token {t} logprob {a} vs HF {b}"
        assert abs(our_pos[tok].logprob - ref_lps[0]) < tol, label
