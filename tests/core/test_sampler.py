"""Sampler maths: every stage checked by value, random stages by statistics.

Random checks draw many independent rows in one forward, with a fresh seed each run (printed
in the failure message), and compare empirical frequencies with the expected distribution
within 5 binomial standard deviations; tokens the stage must exclude must never appear.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from llmserve.sample import (
    BUILTIN_LOGITS_PROCESSORS,
    LogitsProcessor,
    LogprobsTensors,
    Sampler,
    SamplingMetadata,
    check_token_ids,
    compute_prompt_logprobs,
    gather_logprobs,
    make_logits_processors,
)
from llmserve.sample.sampler import apply_penalties
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import LogprobsLists
from pydantic import ValidationError

CPU = torch.device("cpu")
NUM_DRAWS = 4000
#: A fixed distribution whose truncations are easy to work out by hand.
PROBS = [0.4, 0.3, 0.15, 0.1, 0.05]


def build(params, outputs=None, prompts=None, stops=None, generators=None, vocab=None):
    n = len(params)
    return SamplingMetadata.build(
        params,
        outputs if outputs is not None else [[] for _ in range(n)],
        prompts if prompts is not None else [[] for _ in range(n)],
        stops if stops is not None else [frozenset() for _ in range(n)],
        generators if generators is not None else [None] * n,
        vocab,
        CPU,
    )


def sample(params, logits, **kw):
    md = build(params, vocab=logits.shape[1], **kw)
    return Sampler()(logits.clone(), md)


def fresh_seed() -> int:
    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    return seed


def assert_distribution(tokens: torch.Tensor, expected: list[float], seed: int) -> None:
    """Tokens with expected probability 0 never occur; the others within 5 sigma."""
    n = tokens.numel()
    counts = torch.bincount(tokens, minlength=len(expected)).tolist()
    assert len(counts) == len(expected), f"token out of range (seed {seed}): {counts}"
    for tok, (count, p) in enumerate(zip(counts, expected)):
        if p == 0.0:
            assert count == 0, f"excluded token {tok} drawn {count}x (seed {seed})"
        else:
            sigma = math.sqrt(p * (1 - p) / n)
            assert abs(count / n - p) <= 5 * sigma + 1e-12, (
                f"token {tok}: freq {count / n:.4f}, expected {p:.4f} ± {5 * sigma:.4f} "
                f"(seed {seed}, counts {counts})"
            )


def renormalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def fixed_logits(probs=PROBS, n=NUM_DRAWS) -> torch.Tensor:
    return torch.tensor(probs).log().expand(n, -1).contiguous()


# --- greedy -------------------------------------------------------------------------------


def test_greedy_is_argmax_and_builds_nothing():
    torch.manual_seed(0)
    logits = torch.randn(64, 1000)
    md = build([SamplingParams(temperature=0.0)] * 64, vocab=1000)
    assert md.all_greedy and not md.all_random
    assert md.no_penalties and md.no_top_k and md.no_top_p and md.no_min_p
    assert md.temperature is None and md.max_num_logprobs is None
    out = Sampler()(logits.clone(), md)
    assert out.sampled_token_ids.dtype == torch.long
    assert torch.equal(out.sampled_token_ids, logits.argmax(-1))
    assert out.logprobs is None


def test_greedy_ignores_top_k_top_p_min_p_and_seed():
    torch.manual_seed(1)
    logits = torch.randn(8, 50)
    p = SamplingParams(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9, seed=3)
    md = build([p] * 8, vocab=50, generators=[torch.Generator().manual_seed(3)] * 8)
    assert md.top_k is None and md.top_p is None and md.min_p is None and not md.generators
    assert torch.equal(Sampler()(logits.clone(), md).sampled_token_ids, logits.argmax(-1))


def test_mixed_greedy_and_random_rows():
    seed = fresh_seed()
    logits = fixed_logits(n=NUM_DRAWS)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)] * (NUM_DRAWS // 2)
    md = build(params, vocab=len(PROBS))
    assert not md.all_greedy and not md.all_random
    tokens = Sampler()(logits.clone(), md).sampled_token_ids
    assert (tokens[0::2] == 0).all()
    assert_distribution(tokens[1::2], PROBS, seed)


# --- random sampling and truncation -------------------------------------------------------


def test_plain_sampling_matches_distribution():
    seed = fresh_seed()
    tokens = sample([SamplingParams(temperature=1.0)] * NUM_DRAWS, fixed_logits()).sampled_token_ids
    assert_distribution(tokens, PROBS, seed)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_distribution(temperature):
    seed = fresh_seed()
    params = [SamplingParams(temperature=temperature)] * NUM_DRAWS
    tokens = sample(params, fixed_logits()).sampled_token_ids
    assert_distribution(tokens, renormalised([p ** (1 / temperature) for p in PROBS]), seed)


def test_low_temperature_sharpens():
    seed = fresh_seed()
    tokens = sample([SamplingParams(temperature=0.05)] * NUM_DRAWS,
                    fixed_logits()).sampled_token_ids
    # p0/p1 = (4/3)^20 ~ 315: token 0 nearly always.
    expected = renormalised([p ** 20 for p in PROBS])
    assert expected[0] > 0.99
    assert_distribution(tokens, expected, seed)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_never_emits_excluded_tokens(k):
    seed = fresh_seed()
    md_params = [SamplingParams(top_k=k)] * NUM_DRAWS
    tokens = sample(md_params, fixed_logits()).sampled_token_ids
    assert_distribution(tokens, renormalised(PROBS[:k] + [0.0] * (len(PROBS) - k)), seed)


def test_top_k_off_values_keep_everything():
    seed = fresh_seed()
    params = [SamplingParams(top_k=-1), SamplingParams(top_k=0), SamplingParams(top_k=5),
              SamplingParams(top_k=100)] * (NUM_DRAWS // 4)
    md = build(params, vocab=len(PROBS))
    assert md.top_k is None  # k >= vocab is no truncation either
    assert_distribution(Sampler()(fixed_logits(), md).sampled_token_ids, PROBS, seed)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.8, 3),  # 0.4 + 0.3 = 0.7 < 0.8 <= 0.85
        (0.65, 2),  # 0.4 < 0.65 <= 0.7
        (0.35, 1),  # the top token alone reaches it
        (0.01, 1),
        (0.97, 5),  # 0.95 < 0.97
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    seed = fresh_seed()
    tokens = sample([SamplingParams(top_p=top_p)] * NUM_DRAWS, fixed_logits()).sampled_token_ids
    assert_distribution(tokens, renormalised(PROBS[:kept] + [0.0] * (len(PROBS) - kept)), seed)


@pytest.mark.parametrize("force_sort", [False, True])
def test_top_p_applies_to_top_k_renormalised(force_sort):
    # top_k=3 renormalises to [0.47, 0.35, 0.18]: top_p=0.8 then keeps 2 tokens (it keeps 3
    # without top-k). With force_sort, every other row has top-p without top-k, which takes
    # the full-sort path instead of topk(max_top_k); both must agree.
    seed = fresh_seed()
    both = SamplingParams(top_k=3, top_p=0.8)
    other = SamplingParams(top_p=0.8) if force_sort else SamplingParams(top_k=4)
    params = [both, other] * (NUM_DRAWS // 2)
    md = build(params, vocab=len(PROBS))
    assert md.top_p_needs_sort is force_sort
    tokens = Sampler()(fixed_logits(), md).sampled_token_ids
    assert_distribution(tokens[0::2], renormalised([0.4, 0.3, 0, 0, 0]), seed)
    other_kept = 3 if force_sort else 4
    expected_other = renormalised(PROBS[:other_kept] + [0.0] * (len(PROBS) - other_kept))
    assert_distribution(tokens[1::2], expected_other, seed)


@pytest.mark.parametrize("min_p, kept", [(0.9, 1), (0.5, 2), (0.2, 3), (0.05, 4), (0.03, 5)])
def test_min_p_drops_tokens_below_fraction_of_top(min_p, kept):
    # The threshold is min_p * 0.5: 0.45, 0.25, 0.1, 0.025, 0.015.
    seed = fresh_seed()
    probs = [0.5, 0.3, 0.15, 0.03, 0.02]
    tokens = sample([SamplingParams(min_p=min_p)] * NUM_DRAWS,
                    fixed_logits(probs)).sampled_token_ids
    assert_distribution(tokens, renormalised(probs[:kept] + [0.0] * (len(probs) - kept)), seed)


def test_min_p_then_top_k_then_top_p_in_one_batch():
    seed = fresh_seed()
    params = [SamplingParams(min_p=0.5), SamplingParams(top_k=2), SamplingParams(top_p=0.65),
              SamplingParams()] * (NUM_DRAWS // 4)
    tokens = Sampler()(fixed_logits(), build(params, vocab=len(PROBS))).sampled_token_ids
    assert_distribution(tokens[0::4], renormalised([0.4, 0.3, 0, 0, 0]), seed)
    assert_distribution(tokens[1::4], renormalised([0.4, 0.3, 0, 0, 0]), seed)
    assert_distribution(tokens[2::4], renormalised([0.4, 0.3, 0, 0, 0]), seed)
    assert_distribution(tokens[3::4], PROBS, seed)


def test_top_k_with_large_vocab_never_leaves_top_set():
    seed = fresh_seed()
    logits = torch.randn(512, 5000)
    k = torch.randint(1, 40, (512,))
    params = [SamplingParams(top_k=int(x), temperature=1.5) for x in k]
    tokens = sample(params, logits).sampled_token_ids
    ranks = (logits > logits.gather(1, tokens[:, None])).sum(-1)
    assert (ranks < k).all(), f"seed {seed}"


# --- penalties, bias, allowed ids, min_tokens ----------------------------------------------


def test_penalties_change_logits_exactly():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5, 3.0], [2.0, 1.0, -1.0, 0.5, 3.0]])
    params = [
        SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(),
    ]
    md = build(params, outputs=[[0, 0, 2], [0, 1]], prompts=[[3], [4]], vocab=5)
    assert md.penalty_rows.tolist() == [0]  # only the row that uses penalties
    out = apply_penalties(logits.clone(), md)
    # Row 0: seen = prompt {3} + output {0, 2}; counts {0: 2, 2: 1}.
    #   token 0: 2/2 = 1, -0.5*2, -0.25 -> -0.25      token 1: unseen -> 1
    #   token 2: -1*2 = -2, -0.5, -0.25 -> -2.75      token 3: prompt only: 0.5/2 = 0.25
    #   token 4: unseen -> 3
    assert out[0].tolist() == [-0.25, 1.0, -2.75, 0.25, 3.0]
    assert torch.equal(out[1], logits[1])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"repetition_penalty": 1.5}, [2 / 1.5, 1.0, -1.5, 0.5 / 1.5]),
        ({"frequency_penalty": -0.5}, [3.0, 1.0, -0.5, 0.5]),
        ({"presence_penalty": 1.0}, [1.0, 1.0, -2.0, 0.5]),
    ],
)
def test_each_penalty_alone(kwargs, expected):
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    md = build([SamplingParams(**kwargs)], outputs=[[0, 0, 2]], prompts=[[3]], vocab=4)
    out = apply_penalties(logits.clone(), md)
    assert torch.allclose(out, torch.tensor([expected]), rtol=0, atol=1e-6)
    if "repetition_penalty" not in kwargs:
        assert md.prompt_token_mask is None  # prompt only matters to repetition


def test_penalties_apply_to_greedy():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    outs = [[0]]
    base = sample([SamplingParams(temperature=0.0)], logits, outputs=outs)
    pen = sample([SamplingParams(temperature=0.0, presence_penalty=0.5)], logits, outputs=outs)
    assert base.sampled_token_ids.tolist() == [0]
    assert pen.sampled_token_ids.tolist() == [1]


def test_logit_bias_adds_to_listed_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    params = [SamplingParams(temperature=0.0, logit_bias={0: 5.0, 3: -1.5}),
              SamplingParams(temperature=0.0)]
    md = build(params, vocab=4)
    processed = BUILTIN_LOGITS_PROCESSORS["logit_bias"]().apply(logits.clone(), md)
    assert processed.tolist() == [[5.0, 1.0, 2.0, 1.5], [0.0, 1.0, 2.0, 3.0]]
    assert Sampler()(logits.clone(), md).sampled_token_ids.tolist() == [0, 3]


def test_logit_bias_is_clamped_to_100():
    assert SamplingParams(logit_bias={1: 1e6}).logit_bias == {1: 100.0}


def test_allowed_token_ids_restrict_sampling():
    seed = fresh_seed()
    vocab = 20
    logits = torch.zeros(NUM_DRAWS, vocab)
    logits[:, 0] = 10.0  # the favourite, but not allowed
    params = [SamplingParams(allowed_token_ids=[3, 7, 11])] * NUM_DRAWS
    tokens = sample(params, logits).sampled_token_ids
    expected = [1 / 3 if t in (3, 7, 11) else 0.0 for t in range(vocab)]
    assert_distribution(tokens, expected, seed)


def test_allowed_token_ids_greedy_and_other_rows_untouched():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0]] * 2)
    params = [SamplingParams(temperature=0.0, allowed_token_ids=[1, 3]),
              SamplingParams(temperature=0.0)]
    assert sample(params, logits).sampled_token_ids.tolist() == [1, 0]


def test_min_tokens_masks_stop_ids_only_while_below():
    vocab = 6
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 8.0]] * 4)  # EOS=2, stop id 5
    stops = [frozenset({2, 5})] * 4
    params = [SamplingParams(temperature=0.0, min_tokens=3)] * 3 + [SamplingParams(temperature=0.0)]
    outputs = [[1], [1, 1], [1, 1, 1], []]
    md = build(params, outputs=outputs, stops=stops, vocab=vocab)
    assert sorted(set(md.min_tokens_rows.tolist())) == [0, 1]
    tokens = Sampler()(logits.clone(), md).sampled_token_ids.tolist()
    assert tokens[0] not in (2, 5) and tokens[1] not in (2, 5)
    assert tokens[2] == 2 and tokens[3] == 2


def test_min_tokens_random_rows_never_stop_early():
    seed = fresh_seed()
    logits = fixed_logits()  # EOS = token 0 with p=0.4
    params = [SamplingParams(min_tokens=2)] * NUM_DRAWS
    tokens = sample(params, logits, stops=[frozenset({0, 99})] * NUM_DRAWS).sampled_token_ids
    assert_distribution(tokens, renormalised([0.0] + PROBS[1:]), seed)


def test_out_of_vocab_token_ids_are_rejected():
    with pytest.raises(ValueError, match="logit_bias"):
        check_token_ids(SamplingParams(logit_bias={10: 1.0}), 10)
    with pytest.raises(ValueError, match="allowed_token_ids"):
        build([SamplingParams(allowed_token_ids=[0, 12])], vocab=10)
    with pytest.raises(ValueError, match="allowed_token_ids must not be empty"):
        check_token_ids(SamplingParams(allowed_token_ids=[]), 10)
    check_token_ids(SamplingParams(logit_bias={9: 1.0}, allowed_token_ids=[0, 9]), 10)


# --- seeds -------------------------------------------------------------------------------


def run_seeded(seed: int, position: int, others: list[SamplingParams], steps: int = 8,
               target: SamplingParams | None = None) -> list[int]:
    """Sample `steps` tokens for one seeded request placed at `position` among `others`."""
    vocab = 1000
    target = target or SamplingParams(temperature=1.0, seed=seed)
    params = list(others)
    params.insert(position, target)
    gens = [torch.Generator().manual_seed(p.seed) if p.seed is not None and p.temperature > 0
            else None for p in params]
    # The target's logits are the same every step; the others' vary.
    base = torch.sin(torch.arange(vocab, dtype=torch.float32) * 0.37) * 2
    tokens = []
    for _ in range(steps):
        logits = torch.randn(len(params), vocab) * 3
        logits[position] = base
        md = SamplingMetadata.build(params, [[] for _ in params], [[] for _ in params],
                                    [frozenset() for _ in params], gens, vocab, CPU)
        tokens.append(Sampler()(logits, md).sampled_token_ids[position].item())
    return tokens


def test_seeded_row_is_independent_of_batch():
    fresh_seed()  # the unseeded neighbours change from run to run
    alone = run_seeded(42, 0, [])
    mixes = [
        (0, [SamplingParams(temperature=0.7)] * 5),
        (3, [SamplingParams(temperature=0.0), SamplingParams(temperature=1.3, seed=7),
             SamplingParams(top_p=0.5), SamplingParams(top_k=3), SamplingParams(min_p=0.2)]),
        (1, [SamplingParams(temperature=0.0, presence_penalty=1.0)]),
    ]
    for position, others in mixes:
        assert run_seeded(42, position, others) == alone
    assert run_seeded(43, 0, []) != alone


def test_seeded_row_with_truncation_is_independent_of_sort_path():
    target = SamplingParams(temperature=0.9, top_k=200, top_p=0.9, seed=5)
    alone = run_seeded(5, 0, [], target=target)
    # A neighbour with top-p but no top-k forces the full-sort path for the whole batch.
    assert run_seeded(5, 1, [SamplingParams(top_p=0.3)], target=target) == alone
    assert len(set(alone)) > 1


# --- logprobs ----------------------------------------------------------------------------


def brute_ranks(logprobs: torch.Tensor, token_ids: torch.Tensor) -> list[int]:
    return [1 + sum(1 for v in row.tolist() if v > row[t].item())
            for row, t in zip(logprobs, token_ids.tolist())]


def test_logprobs_are_raw_and_topk_sorted():
    fresh_seed()
    vocab = 300
    logits = torch.randn(6, vocab) * 2
    params = [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=0.8, logprobs=5, presence_penalty=1.0, top_k=10),
        SamplingParams(temperature=1.0, logit_bias={7: 50.0}),  # no logprobs asked
        SamplingParams(temperature=0.0, allowed_token_ids=[1, 2]),
        SamplingParams(temperature=2.0, top_p=0.5),
        SamplingParams(temperature=0.0, logprobs=0),
    ]
    md = build(params, outputs=[[1, 2]] * 6, vocab=vocab)
    assert md.max_num_logprobs == 5
    out = Sampler()(logits.clone(), md)
    sampled = out.sampled_token_ids
    assert sampled[2].item() == 7 and sampled[3].item() in (1, 2)
    raw = torch.log_softmax(logits, dim=-1)
    lp = out.logprobs
    assert lp.token_ids.shape == (6, 6) and lp.logprobs.shape == (6, 6)
    assert torch.equal(lp.token_ids[:, 0], sampled)
    assert torch.allclose(lp.logprobs[:, 0], raw.gather(1, sampled[:, None])[:, 0])
    top = torch.topk(raw, 5, dim=-1)
    assert torch.allclose(lp.logprobs[:, 1:], top.values)
    assert torch.equal(raw.gather(1, lp.token_ids[:, 1:]), lp.logprobs[:, 1:])
    assert (lp.logprobs[:, 1:-1] >= lp.logprobs[:, 2:]).all()
    assert lp.ranks.tolist() == brute_ranks(raw, sampled)
    assert lp.ranks[0].item() == 1  # greedy without processing picks the top token


def test_gather_logprobs_ranks_and_tolists():
    logprobs = torch.log_softmax(torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]]), -1)
    token_ids = torch.tensor([0, 3])
    lp = gather_logprobs(logprobs, 2, token_ids)
    assert isinstance(lp, LogprobsTensors)
    assert lp.ranks.tolist() == [3, 2]
    lists = lp.tolists()
    assert isinstance(lists, LogprobsLists)
    assert lists.token_ids == [[0, 1, 2], [3, 2, 3]]
    assert lists.ranks == [3, 2]
    assert lists.logprobs[0] == pytest.approx(logprobs[0, [0, 1, 2]].tolist())
    assert lists.logprobs[1] == pytest.approx(logprobs[1, [3, 2, 3]].tolist())
    assert all(isinstance(t, int) for row in lists.token_ids for t in row)
    # Ties with the token do not count against its rank.
    tied = gather_logprobs(torch.zeros(1, 4), 0, torch.tensor([2]))
    assert tied.ranks.tolist() == [1] and tied.token_ids.shape == (1, 1)


def test_compute_prompt_logprobs():
    torch.manual_seed(3)
    logits = torch.randn(7, 50, dtype=torch.bfloat16)
    next_ids = torch.randint(0, 50, (7,))
    lp = compute_prompt_logprobs(logits, next_ids, 4)
    raw = torch.log_softmax(logits.float(), dim=-1)
    assert torch.equal(lp.token_ids[:, 0], next_ids)
    assert torch.allclose(lp.logprobs[:, 0], raw.gather(1, next_ids[:, None])[:, 0])
    assert torch.allclose(lp.logprobs[:, 1:], raw.topk(4, dim=-1).values)
    assert lp.ranks.tolist() == brute_ranks(raw, next_ids)


# --- logits processors -------------------------------------------------------------------


def test_per_request_callables_two_and_three_args():
    seen = {}

    def force_last(output_ids, row):
        seen["two"] = list(output_ids)
        row[:] = float("-inf")
        row[-1] = 0.0
        return row

    def ban_prompt(prompt_ids, output_ids, row):
        seen["three"] = (list(prompt_ids), list(output_ids))
        row[prompt_ids] = float("-inf")
        return row

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 3)
    params = [SamplingParams(temperature=0.0, logits_processors=[force_last]),
              SamplingParams(temperature=0.0, logits_processors=[ban_prompt]),
              SamplingParams(temperature=0.0)]
    out = sample(params, logits, outputs=[[1, 2], [3], []], prompts=[[9], [0, 1], [0]])
    assert out.sampled_token_ids.tolist() == [3, 2, 0]
    assert seen == {"two": [1, 2], "three": ([0, 1], [3])}


class BanToken(LogitsProcessor):
    """Test processor: bans token 0 in every row and counts its calls."""

    calls = 0

    def apply(self, logits, md):
        type(self).calls += 1
        assert logits.shape == (md.num_reqs, md.vocab_size) and logits.dtype == torch.float32
        logits[:, 0] = float("-inf")
        return logits


def test_batch_logits_processor_via_sampler():
    fresh_seed()
    logits = torch.tensor([[5.0, 1.0, 0.0]] * 3)
    params = [SamplingParams(temperature=0.0, logprobs=1), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0)]
    procs = make_logits_processors([*BUILTIN_LOGITS_PROCESSORS.values(), BanToken])
    assert [type(p) for p in procs] == [*BUILTIN_LOGITS_PROCESSORS.values(), BanToken]
    BanToken.calls = 0
    out = Sampler(procs)(logits.clone(), build(params, vocab=3))
    assert BanToken.calls == 1
    assert out.sampled_token_ids[:2].tolist() == [1, 1] and out.sampled_token_ids[2].item() != 0
    # Logprobs stay those of the raw logits: token 0 is still the top candidate there.
    assert out.logprobs.token_ids[0].tolist() == [1, 0]
    assert out.logprobs.ranks[0].item() == 2


def test_logits_processor_is_abstract():
    with pytest.raises(TypeError):
        LogitsProcessor()


# --- SamplingParams validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, message",
    [
        ({"temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"top_k": -2}, "top_k", "greater than or equal to -1"),
        ({"min_p": 1.1}, "min_p", "less than or equal to 1"),
        ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"prompt_logprobs": -1}, "prompt_logprobs", "greater than or equal to 0"),
        ({"presence_penalty": 2.5}, "presence_penalty", "less than or equal to 2"),
        ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"min_tokens": 5, "max_tokens": 3}, "min_tokens", "max_tokens=3"),
    ],
)
def test_sampling_params_validation_names_field_and_range(kwargs, field, message):
    with pytest.raises(ValidationError) as err:
        SamplingParams(**kwargs)
    text = str(err.value)
    assert field in text and message in text, text
