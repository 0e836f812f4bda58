"""The pieces of speculative decoding that stand alone: n-gram prompt lookup, and the
rejection sampler, whose output must follow the target distribution exactly whatever the
draft (checked by chi-square tests over thousands of independent rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llmserve.spec_decode.ngram import propose_ngram
from llmserve.spec_decode.rejection import PAD, greedy_verify, rejection_sample

V, K, DRAWS = 6, 3, 40_000
#: Chi-square critical value for V - 1 = 5 degrees of freedom at p = 0.001: a correct
#: sampler exceeds it one run in a thousand (the draws are seeded, so a run is repeatable).
CHI2_CRITICAL = 20.515


def assert_follows(tokens: torch.Tensor, probs: torch.Tensor) -> None:
    """Pearson's chi-square of the token counts against ``probs``."""
    counts = torch.bincount(tokens, minlength=V).double()
    expected = probs.double() / probs.double().sum() * len(tokens)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRITICAL, f"chi-square {chi2:.1f}: counts {counts.tolist()}, " \
                                 f"expected {expected.tolist()}"


def test_ngram_drafts_what_followed_the_latest_match():
    seq = np.array([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3])
    # 3-gram [1, 2, 3] last seen at 5..7, followed by 7, 8.
    assert propose_ngram(seq, k=2, min_n=1, max_n=3).tolist() == [7, 8]
    assert propose_ngram(seq, k=5, min_n=1, max_n=3).tolist() == [7, 8, 5, 1, 2]
    assert propose_ngram(np.array([4, 5, 6]), k=3, min_n=1, max_n=3).tolist() == []
    # Falls back to shorter n-grams: only [6] recurs.
    assert propose_ngram(np.array([6, 1, 2, 6]), k=2, min_n=1, max_n=3).tolist() == [1, 2]
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        propose_ngram(seq, k=2, min_n=3, max_n=2)


def _case(seed: int, draft_is_distribution: bool):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(K + 1, V, generator=g) ** 3
    p /= p.sum(-1, keepdim=True)
    q = torch.rand(K, V, generator=g) ** 3
    q /= q.sum(-1, keepdim=True)
    # Drafts drawn from q (or fixed, for a deterministic proposer).
    if draft_is_distribution:
        drafts = torch.stack([torch.multinomial(q[i], DRAWS, replacement=True, generator=g)
                              for i in range(K)], dim=1)
        draft_probs = q.expand(DRAWS, K, V)
    else:
        drafts = torch.tensor([2, 0, 4]).expand(DRAWS, K)
        draft_probs = None
    return p, drafts, draft_probs


@pytest.mark.parametrize("draft_is_distribution", [True, False], ids=["draft-model", "ngram"])
def test_first_and_second_tokens_follow_the_target(draft_is_distribution):
    torch.manual_seed(0)
    p, drafts, draft_probs = _case(1, draft_is_distribution)
    out = rejection_sample(p.expand(DRAWS, K + 1, V), drafts, torch.full((DRAWS,), K),
                           draft_probs).output_token_ids
    first = out[:, 0]
    assert_follows(first, p[0])
    # Where the first draft was accepted, the second token follows p_1 (the target's
    # distribution after that draft).
    kept = (first == drafts[:, 0]) & (out[:, 1] != PAD)
    second = out[kept, 1]
    assert len(second) > 1000
    assert_follows(second, p[1])


def test_every_emitted_token_is_the_prefix_then_one_more():
    p, drafts, draft_probs = _case(2, True)
    n = torch.randint(0, K + 1, (DRAWS,))
    res = rejection_sample(p.expand(DRAWS, K + 1, V), drafts, n, draft_probs)
    out, acc = res.output_token_ids, res.num_accepted
    assert bool((acc <= n).all())
    cols = torch.arange(K + 1)
    assert bool(((out != PAD) == (cols[None, :] <= acc[:, None])).all())
    prefix = cols[None, :K] < acc[:, None]
    assert bool((out[:, :K][prefix] == drafts[prefix]).all())
    # A row with no drafts samples straight from p_0.
    none = out[n == 0, 0]
    assert_follows(none, p[0])


def test_greedy_rows_accept_while_the_argmax_agrees():
    p = torch.full((1, K + 1, V), 0.01)
    for i, best in enumerate([2, 0, 5, 1]):
        p[0, i, best] = 1.0
    res = rejection_sample(p, torch.tensor([[2, 0, 3]]), torch.tensor([3]),
                           is_greedy=torch.tensor([True]))
    assert res.output_token_ids.tolist() == [[2, 0, 5, PAD]]
    assert res.num_accepted.tolist() == [2]
    res = rejection_sample(p, torch.tensor([[2, 0, 5]]), torch.tensor([3]),
                           is_greedy=torch.tensor([True]))
    assert res.output_token_ids.tolist() == [[2, 0, 5, 1]]  # all accepted, plus the bonus


def test_a_seeded_row_does_not_depend_on_the_batch():
    p, drafts, draft_probs = _case(3, True)
    rows = 64

    def run(batch_seed: int) -> list[int]:
        torch.manual_seed(batch_seed)
        gens = {5: torch.Generator().manual_seed(1234)}
        out = rejection_sample(p.expand(rows, K + 1, V), drafts[:rows],
                               torch.full((rows,), K), draft_probs[:rows], generators=gens)
        return out.output_token_ids[5].tolist()

    assert run(0) == run(1)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"target_probs must be \[2, 4, V\]"):
        rejection_sample(torch.rand(2, 3, V), torch.zeros(2, 3, dtype=torch.long),
                         torch.tensor([3, 3]))


def test_greedy_verification_matches_the_rejection_sampler_on_greedy_rows():
    """The all-greedy path skips probabilities; it must emit what the full sampler emits."""
    gen = torch.Generator().manual_seed(3)
    batch, k, vocab = 64, 5, 7
    logits = torch.randn(batch, k + 1, vocab, generator=gen)
    argmax = logits.argmax(dim=2)
    # Drafts agree with the argmax for a random prefix, then not.
    agree = torch.randint(0, k + 1, (batch,), generator=gen)
    drafts = torch.where(torch.arange(k)[None, :] < agree[:, None], argmax[:, :k],
                         (argmax[:, :k] + 1) % vocab)
    num_drafts = torch.randint(0, k + 1, (batch,), generator=gen)
    want = rejection_sample(logits.softmax(dim=2), drafts, num_drafts,
                            is_greedy=torch.ones(batch, dtype=torch.bool), target_argmax=argmax)
    got = greedy_verify(argmax, drafts, num_drafts)
    assert torch.equal(got.output_token_ids, want.output_token_ids)
    assert torch.equal(got.num_accepted, torch.minimum(agree, num_drafts))
