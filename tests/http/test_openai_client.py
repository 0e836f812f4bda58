"""The server driven by the official ``openai`` client: completions, chat, streaming, n,
logprobs, stop, seeds and usage, against the embedded model (real text)."""

from __future__ import annotations

import math

import pytest
from llmserve.default_model import GREEDY_SAMPLES

MODEL = "default"


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "llmserve"


@pytest.mark.parametrize("sample", GREEDY_SAMPLES[:2], ids=lambda s: s["prompt"][:12])
def test_greedy_completion_matches_recorded_hf_text(client, sample):
    """Token-id prompt, temperature 0: the text HF transformers produced for this model."""
    out = client.completions.create(model=MODEL, prompt=sample["prompt_token_ids"],
                                    max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    choice = out.choices[0]
    assert choice.text == sample["text"]
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(sample["prompt_token_ids"])
    assert out.usage.completion_tokens == 24
    assert out.usage.total_tokens == 24 + len(sample["prompt_token_ids"])
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == MODEL


def test_streamed_completion_equals_non_streamed(client):
    sample = GREEDY_SAMPLES[2]
    kwargs = dict(model=MODEL, prompt=sample["prompt"], max_tokens=24, temperature=0.9, seed=7,
                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and len(text) > 0
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    # include_usage: the last chunk has no choices and the whole request's usage.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_completion_and_its_stream(client, http):
    messages = [{"role": "system", "content": "You explain Python."},
                {"role": "user", "content": "What does the pass statement do?"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                           temperature=0)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    # Usage counts exactly the templated prompt.
    tokenized = http.post("/tokenize", json={"messages": messages}).json()
    assert whole.usage.prompt_tokens == tokenized["count"]
    assert whole.usage.completion_tokens + whole.usage.prompt_tokens == whole.usage.total_tokens

    stream = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                                 temperature=0, stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in stream)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == msg.content
    assert stream[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_n_choices_are_seeded_and_distinct(client):
    kwargs = dict(model=MODEL, prompt="Zebra quantum spoon", max_tokens=12, temperature=1.5,
                  seed=123, n=3, extra_body={"ignore_eos": True})
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    texts_a = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
    texts_b = [c.text for c in sorted(b.choices, key=lambda c: c.index)]
    assert texts_a == texts_b  # same seed, same texts
    assert len(set(texts_a)) > 1  # children get seed + index
    assert a.usage.completion_tokens == 36

    streamed = {i: "" for i in range(3)}
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert [streamed[i] for i in range(3)] == texts_a


def test_different_seeds_differ_and_unseeded_runs(client):
    texts = {client.completions.create(model=MODEL, prompt="Zebra quantum spoon", max_tokens=16,
                                       temperature=1.5, seed=s,
                                       extra_body={"ignore_eos": True}).choices[0].text
             for s in range(4)}
    assert len(texts) >= 3


def test_completion_logprobs(client):
    out = client.completions.create(model=MODEL, prompt="The with statement", max_tokens=6,
                                    temperature=0, logprobs=3, extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(max(top.values()), logprob, abs_tol=1e-5)
        assert top.get(token) == pytest.approx(logprob, abs=1e-5)


def test_echo_with_logprobs_includes_the_prompt(client):
    prompt = "The for statement"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0,
                                    echo=True, logprobs=1)
    choice = out.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    lp = choice.logprobs
    n_prompt = out.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + out.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])


def test_chat_logprobs(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Define a tuple."}], max_tokens=5,
        temperature=0, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].token == entry.token  # greedy
        assert entry.bytes == list(entry.token.encode())


def test_stop_strings_end_the_text(client):
    ref = client.completions.create(model=MODEL, prompt="The try statement", max_tokens=30,
                                    temperature=0, extra_body={"ignore_eos": True})
    text = ref.choices[0].text
    stop = text[8:11]
    assert stop and stop.strip(), text
    cut = text[:text.index(stop)]
    out = client.completions.create(model=MODEL, prompt="The try statement", max_tokens=30,
                                    temperature=0, stop=[stop])
    assert out.choices[0].text == cut
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra["stop_reason"] == stop
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The try statement", max_tokens=30, temperature=0, stop=stop,
        stream=True))
    assert streamed == cut
    incl = client.completions.create(model=MODEL, prompt="The try statement", max_tokens=30,
                                     temperature=0, stop=stop,
                                     extra_body={"include_stop_str_in_output": True})
    assert incl.choices[0].text == cut + stop


def test_multiple_prompts_and_usage(client):
    prompts = ["The while statement", "A function definition"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0,
                                    n=2, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    single = [client.completions.create(model=MODEL, prompt=p, max_tokens=5, temperature=0)
              for p in prompts]
    by_index = {c.index: c.text for c in out.choices}
    assert by_index[0] == by_index[1] == single[0].choices[0].text  # greedy: n copies agree
    assert by_index[2] == single[1].choices[0].text
    assert out.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)
    assert out.usage.completion_tokens == 20


def test_cached_prompt_tokens_are_reported(client):
    prompt = ("Objects are Python's abstraction for data. All data in a Python program is "
              "represented by objects or by relations between objects. ") * 2
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    n = first.usage.prompt_tokens
    assert n > 32
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16
    assert second.choices[0].text == first.choices[0].text


def test_max_completion_tokens_and_penalties(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}],
        max_completion_tokens=7, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, seed=3, logit_bias={"11": -100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 7,
                    "ignore_eos": False})
    assert out.usage.completion_tokens == 7  # min_tokens == max: exactly 7
    assert out.choices[0].finish_reason == "length"


def test_vllm_extras_stop_token_ids_and_prompt_logprobs(client, http):
    """The recorded greedy continuation, stopped at its third token by stop_token_ids: the
    stop token counts as generated but is not in the text (as in vLLM)."""
    sample = GREEDY_SAMPLES[0]
    ids, expected = sample["prompt_token_ids"], sample["token_ids"]
    stop_id = expected[2]
    assert stop_id not in expected[:2]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0,
                                    extra_body={"stop_token_ids": [stop_id],
                                                "prompt_logprobs": 2})
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop_id
    assert out.usage.completion_tokens == 3
    first_two = http.post("/detokenize", json={"tokens": expected[:2]}).json()["prompt"]
    assert choice.text == first_two
    incl = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0,
                                     extra_body={"stop_token_ids": [stop_id],
                                                 "include_stop_str_in_output": True})
    three = http.post("/detokenize", json={"tokens": expected[:3]}).json()["prompt"]
    assert incl.choices[0].text == three
    plp = choice.model_extra["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for pos, tid in zip(plp[1:], ids[1:]):
        assert str(tid) in pos and all(v["logprob"] <= 0 for v in pos.values())


def test_priority_field_is_accepted(http):
    r = http.post("/v1/completions", json={"prompt": "The", "max_tokens": 2, "priority": -3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
