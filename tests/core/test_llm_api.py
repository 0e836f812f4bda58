"""The offline API end to end on tiny checkpoints: prompt forms, sampling semantics through the
whole engine, errors, loading variants."""

from __future__ import annotations

import json
import shutil

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llama_dir(tiny_models):
    return tiny_models["LlamaForCausalLM"]


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", max_model_len=256, kv_cache_memory=8 * 2**20)


def greedy(n_tokens=8, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True, **kw)


def test_prompt_forms_agree(llm):
    tok = llm.get_tokenizer()
    text = "The quick brown fox"
    ids = tok.encode(text)
    a, b, c, d = llm.generate([text, ids, {"prompt": text}, {"prompt_token_ids": ids}],
                              greedy(), use_tqdm=False)
    assert a.prompt == text and b.prompt is None
    assert a.prompt_token_ids == b.prompt_token_ids == ids
    assert a.outputs[0].token_ids == b.outputs[0].token_ids == c.outputs[0].token_ids \
        == d.outputs[0].token_ids
    single = llm.generate(ids, greedy(), use_tqdm=False)
    assert len(single) == 1 and single[0].outputs[0].token_ids == a.outputs[0].token_ids
    assert a.outputs[0].text == tok.decode(a.outputs[0].token_ids)


def test_output_fields(llm):
    out = llm.generate("hello", greedy(5, logprobs=2), use_tqdm=False)[0]
    assert out.finished and out.request_id
    c = out.outputs[0]
    assert c.index == 0 and len(c.token_ids) == 5 and c.finish_reason == "length"
    assert c.stop_reason is None and len(c.logprobs) == 5
    assert c.cumulative_logprob == pytest.approx(
        sum(pos[t].logprob for pos, t in zip(c.logprobs, c.token_ids)), abs=1e-5)
    for pos, t in zip(c.logprobs, c.token_ids):
        assert pos[t].rank == 1  # greedy picks the most likely token
        assert 2 <= len(pos) <= 3


def test_per_prompt_sampling_params_and_order(llm):
    params = [greedy(3), greedy(7), greedy(1)]
    outs = llm.generate(["a", "b", "c"], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 7, 1]
    with pytest.raises(ValueError, match="one per prompt"):
        llm.generate(["a", "b"], [greedy(), greedy(), greedy()], use_tqdm=False)


def test_seed_reproducible_across_batch_compositions(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, seed=1234, ignore_eos=True)
    alone = llm.generate("Once upon a time", seeded, use_tqdm=False)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.3, max_tokens=20, ignore_eos=True)
    batch = llm.generate(["x y z", "Once upon a time", "another prompt here", "q"],
                         [noise, seeded, noise, greedy(5)], use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone
    reordered = llm.generate(["Once upon a time", "zzz"], [seeded, noise], use_tqdm=False)
    assert reordered[0].outputs[0].token_ids == alone
    other = llm.generate("Once upon a time", seeded.model_copy(update={"seed": 99}),
                         use_tqdm=False)[0].outputs[0].token_ids
    assert other != alone


def test_seed_reproducible_under_preemption(llama_dir):
    seeded = SamplingParams(temperature=1.0, max_tokens=40, seed=7, ignore_eos=True)
    roomy = LLM(llama_dir, dtype="float32", max_model_len=256)
    expected = roomy.generate("Once upon a time", seeded, use_tqdm=False)[0].outputs[0].token_ids
    tight = LLM(llama_dir, dtype="float32", max_model_len=256, num_gpu_blocks_override=8)
    outs = tight.generate(["Once upon a time"] + [f"filler {i} " * 4 for i in range(5)],
                          [seeded] + [greedy(40)] * 5, use_tqdm=False)
    assert tight.llm_engine.core.scheduler.num_preemptions > 0
    assert outs[0].outputs[0].token_ids == expected


def test_n_sampled_children_differ_and_are_seeded(llm):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=3, ignore_eos=True)
    first = llm.generate("abc", params, use_tqdm=False)[0]
    again = llm.generate("abc", params, use_tqdm=False)[0]
    ids = [tuple(c.token_ids) for c in first.outputs]
    assert len(set(ids)) > 1
    assert ids == [tuple(c.token_ids) for c in again.outputs]


def test_stop_string_spanning_tokens(llm):
    ref = llm.generate("The", greedy(20), use_tqdm=False)[0].outputs[0]
    tok = llm.get_tokenizer()
    # A stop string made of the tail of token 3 and the head of token 5 spans tokens.
    pieces = [tok.decode([t]) for t in ref.token_ids]
    text = ref.text
    start = len("".join(pieces[:3])) - 1
    stop = text[start:start + len(pieces[3]) + 3]
    assert len(stop) >= 3
    out = llm.generate("The", greedy(20, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:text.index(stop)]
    assert len(out.token_ids) < 20
    incl = llm.generate("The", greedy(20, stop=[stop], include_stop_str_in_output=True),
                        use_tqdm=False)[0].outputs[0]
    assert incl.text == text[:text.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(llm):
    ref = llm.generate("hello", greedy(10), use_tqdm=False)[0].outputs[0].token_ids
    stop_tok = ref[3]
    first = ref.index(stop_tok)
    out = llm.generate("hello", greedy(10, stop_token_ids=[stop_tok]), use_tqdm=False)[0]
    c = out.outputs[0]
    assert c.token_ids == ref[:first + 1]
    assert c.finish_reason == "stop" and c.stop_reason == stop_tok
    # min_tokens masks the stop token until enough tokens exist.
    late = llm.generate("hello", greedy(10, stop_token_ids=[stop_tok], min_tokens=first + 2),
                        use_tqdm=False)[0].outputs[0]
    assert len(late.token_ids) >= first + 2
    assert stop_tok not in late.token_ids[:first + 2]


def test_eos_stops_unless_ignored(llama_dir):
    llm = LLM(llama_dir, dtype="float32", max_model_len=256)
    ref = llm.generate("hi", greedy(12), use_tqdm=False)[0].outputs[0].token_ids
    eos = ref[2]
    engine = llm.llm_engine
    engine.frontend.eos_token_ids = frozenset([eos])  # pretend this token is the model's EOS
    out = llm.generate("hi", SamplingParams(temperature=0, max_tokens=12),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == ref[:ref.index(eos) + 1]
    assert out.finish_reason == "stop" and out.stop_reason is None
    kept = llm.generate("hi", greedy(12), use_tqdm=False)[0].outputs[0]
    assert kept.token_ids == ref


def test_chat_uses_template(llm):
    tok = llm.get_tokenizer()
    messages = [{"role": "user", "content": "Say hi"}]
    out = llm.chat(messages, greedy(4), use_tqdm=False)[0]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=False)
    assert out.prompt_token_ids == list(expected)
    many = llm.chat([messages, [{"role": "user", "content": "Another"}]], greedy(4),
                    use_tqdm=False)
    assert len(many) == 2 and many[0].outputs[0].token_ids == out.outputs[0].token_ids


def test_chat_tools_reach_the_template(llm):
    template = ("{% for t in tools or [] %}<tool {{ t.function.name }}>{% endfor %}"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "user", "content": "Rain?"}]
    out = llm.chat(messages, greedy(2), use_tqdm=False, chat_template=template, tools=tools)[0]
    tok = llm.get_tokenizer()
    assert out.prompt_token_ids == tok.encode("<tool get_weather>Rain?", add_special_tokens=False)


def test_generation_config_defaults(tmp_path, llama_dir):
    model_dir = tmp_path / "m"
    shutil.copytree(llama_dir, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen.update(temperature=0.0, top_k=5)
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    llm = LLM(str(model_dir), dtype="float32", max_model_len=128)
    defaults = llm.get_default_sampling_params()
    assert defaults.temperature == 0.0 and defaults.top_k == 5
    out = llm.generate(["x", "x"], use_tqdm=False)
    assert out[0].outputs[0].token_ids == out[1].outputs[0].token_ids  # greedy by default


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(block_size=0), "block_size"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(dtype="int8"), "dtype"),
    (dict(unknown_flag=1), "unknown_flag"),
])
def test_invalid_engine_args_name_the_field(llama_dir, kwargs, field):
    with pytest.raises(ValueError) as exc:
        LLM(llama_dir, **kwargs)
    assert field in str(exc.value)


def test_max_model_len_above_model_limit(llama_dir):
    with pytest.raises(ValueError, match=r"max_model_len must be in \[1, 512\]"):
        LLM(llama_dir, max_model_len=4096)


@pytest.mark.parametrize("kwargs, text", [
    (dict(temperature=-1), "greater than or equal to 0"),
    (dict(top_p=0.0), "greater than 0"),
    (dict(logprobs=21), "less than or equal to 20"),
    (dict(max_tokens=4, min_tokens=5), "min_tokens"),
])
def test_invalid_sampling_params(kwargs, text):
    with pytest.raises(pydantic.ValidationError) as exc:
        SamplingParams(**kwargs)
    assert text in str(exc.value)
    assert next(iter(kwargs)) in str(exc.value)


def test_bad_prompts_are_rejected_without_leaking(llm):
    core = llm.llm_engine.core
    free_before = core.kv_manager.num_free_blocks
    with pytest.raises(ValueError, match="shorter than max_model_len"):
        llm.generate([[5] * 300], greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="at least one token"):
        llm.generate([[]], greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        llm.generate(["fine", [1, 99999]], greedy(), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == free_before
    assert llm.generate("still works", greedy(3), use_tqdm=False)[0].outputs[0].token_ids


def test_unsupported_architecture_lists_supported(tmp_path, llama_dir):
    model_dir = tmp_path / "m"
    shutil.copytree(llama_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["architectures"] = ["GPTBigCodeForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as exc:
        LLM(str(model_dir))
    msg = str(exc.value)
    assert "GPTBigCodeForCausalLM" in msg and "Qwen3ForCausalLM" in msg
    assert "Installed plugins" in msg


def test_unsupported_rope_type(tmp_path, llama_dir):
    model_dir = tmp_path / "m"
    shutil.copytree(llama_dir, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported; supported: default, "
                                         "llama3, linear"):
        LLM(str(model_dir))


def test_sharded_checkpoint_loads_identically(tmp_path, llama_dir, llm):
    model_dir = tmp_path / "sharded"
    shutil.copytree(llama_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(model_dir / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = LLM(str(model_dir), dtype="float32", max_model_len=256)
    a = sharded.generate("shard test", greedy(10), use_tqdm=False)[0].outputs[0].token_ids
    b = llm.generate("shard test", greedy(10), use_tqdm=False)[0].outputs[0].token_ids
    assert a == b


def test_missing_weight_is_an_error(tmp_path, llama_dir):
    model_dir = tmp_path / "m"
    shutil.copytree(llama_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="down_proj"):
        LLM(str(model_dir))


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16),
                                                ("float16", torch.float16),
                                                ("auto", torch.float32)])
def test_dtypes(llama_dir, dtype, torch_dtype):
    llm = LLM(llama_dir, dtype=dtype, max_model_len=128)
    model = llm.llm_engine.core.runner.model
    assert next(model.parameters()).dtype == torch_dtype
    assert llm.llm_engine.core.runner.kv_caches[0].dtype == torch_dtype
    out = llm.generate("dtype check", greedy(6), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 6


def test_kv_capacity_is_logged(llama_dir, caplog):
    caplog.set_level("INFO", logger="llmserve.engine.core")
    llm = LLM(llama_dir, dtype="float32", max_model_len=128, kv_cache_memory=2 * 2**20)
    core = llm.llm_engine.core
    # 2 layers x 2 (K,V) x 16 tokens x 2 kv heads x 16 dims x 4 bytes = 8 KiB per block.
    assert core.num_blocks == 2 * 2**20 // 8192
    assert f"{core.num_blocks * 16} tokens" in caplog.text


def test_logit_bias_and_allowed_ids_through_engine(llm):
    out = llm.generate("bias", greedy(6, logit_bias={42: 100.0}), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [42] * 6
    allowed = [7, 8, 9]
    out = llm.generate("allowed", SamplingParams(temperature=1.0, max_tokens=20, seed=0,
                                                 ignore_eos=True, allowed_token_ids=allowed),
                       use_tqdm=False)[0].outputs[0]
    assert set(out.token_ids) <= set(allowed)


def test_penalties_through_engine_match_hand_computation(llm, llama_dir):
    """Greedy under repetition / presence / frequency penalties equals the argmax of the HF
    model's logits penalised by hand with vLLM's definitions."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    prompt = llm.get_tokenizer().encode("penalty penalty test")
    params = greedy(6, repetition_penalty=3.0, presence_penalty=1.5, frequency_penalty=0.7)
    out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    ids, expected = list(prompt), []
    with torch.no_grad():
        for _ in range(6):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            seen = set(ids)
            counts = torch.bincount(torch.tensor(expected, dtype=torch.long),
                                    minlength=logits.numel()).float()
            for t in seen:
                logits[t] = logits[t] / 3.0 if logits[t] > 0 else logits[t] * 3.0
            logits -= 0.7 * counts + 1.5 * (counts > 0).float()
            nxt = int(logits.argmax())
            expected.append(nxt)
            ids.append(nxt)
    assert out == expected


def test_prompt_logprobs_with_n_and_preemption(llama_dir):
    """n>1 in a batch that preempts still gives exactly one entry per prompt token."""
    prompt = list(range(20, 90))
    params = SamplingParams(n=2, temperature=0, max_tokens=30, prompt_logprobs=1,
                            ignore_eos=True)
    roomy = LLM(llama_dir, dtype="float32", max_model_len=256)
    ref = roomy.generate([prompt], params, use_tqdm=False)[0].prompt_logprobs
    tight = LLM(llama_dir, dtype="float32", max_model_len=256, num_gpu_blocks_override=9,
                max_num_batched_tokens=32)
    outs = tight.generate([prompt] + [[5 + i] * 40 for i in range(3)],
                          [params] + [greedy(40)] * 3, use_tqdm=False)
    assert tight.llm_engine.core.scheduler.num_preemptions > 0
    got = outs[0].prompt_logprobs
    assert len(ref) == len(got) == len(prompt) and got[0] is None
    for a, b in zip(ref[1:], got[1:]):
        assert sorted(a) == sorted(b)
        for tid in a:
            assert abs(a[tid].logprob - b[tid].logprob) < 1e-4
