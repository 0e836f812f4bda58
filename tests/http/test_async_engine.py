"""``AsyncEngine`` from Python: the engine core in its own process, outputs streamed per
request, abort, stop strings, a full queue and a dead core."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from llmserve import LLM, SamplingParams
from llmserve.config import EngineArgs
from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.engine.async_engine import (
    AsyncEngine,
    EngineDeadError,
    QueueFullError,
    RequestOutputKind,
)

ARGS = dict(max_model_len=128, kv_cache_memory=8 * 2**20)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


async def wait_idle(engine: AsyncEngine, timeout_s: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        stats = engine.engine_stats
        if stats.get("num_running") == 0 and stats.get("num_waiting") == 0:
            return stats
        assert asyncio.get_running_loop().time() < deadline, stats
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def offline():
    return LLM(**ARGS)


def test_generate_abort_and_stop(offline):
    prompts = ["The try statement", "A class definition", "Generators are"]
    refs = offline.generate(prompts, greedy(20), use_tqdm=False)

    async def main():
        async with AsyncEngine(EngineArgs(**ARGS)) as engine:
            assert engine.info.kv_capacity_tokens == 1024 and engine.is_running

            async def stream(prompt, params, **kw):
                text, ids, outs = "", [], []
                async for out in engine.generate(prompt, params, **kw):
                    outs.append(out)
                    text += out.outputs[0].text
                    ids += out.outputs[0].token_ids
                return text, ids, outs

            # Concurrent streams: the deltas add up to the offline engine's text and ids.
            results = await asyncio.gather(*[stream(p, greedy(20)) for p in prompts])
            for (text, ids, outs), ref in zip(results, refs):
                assert ids == ref.outputs[0].token_ids and text == ref.outputs[0].text
                assert len(outs) > 1 and outs[-1].finished
                assert outs[-1].outputs[0].finish_reason == "length"
                assert not any(o.finished for o in outs[:-1])

            # FINAL_ONLY: one output holding everything.
            _, _, outs = await stream(prompts[0], greedy(20),
                                      output_kind=RequestOutputKind.FINAL_ONLY)
            assert len(outs) == 1 and outs[0].outputs[0].text == refs[0].outputs[0].text

            # Leaving the loop early aborts the request in the core and frees its blocks.
            total = engine.info.num_blocks
            async for out in engine.generate("The", greedy(100), "early"):
                stats = engine.engine_stats
                if stats["num_running"] == 1 and stats["num_free_blocks"] < total:
                    break
            stats = await wait_idle(engine)
            assert stats["num_free_blocks"] == total and stats["kv_cache_usage"] == 0.0

            # A stop string found by the front end finishes the request in the core.
            ref_text = refs[0].outputs[0].text
            stop = ref_text[5:8]
            text, ids, outs = await stream(prompts[0], greedy(100, stop=[stop]))
            assert text == ref_text[:ref_text.index(stop)]
            assert outs[-1].outputs[0].finish_reason == "stop"
            assert outs[-1].outputs[0].stop_reason == stop
            assert len(ids) < 25  # not run to max_tokens=100
            await wait_idle(engine)

            # Bad requests are refused before anything is queued.
            with pytest.raises(ValueError, match="max_model_len=128"):
                await engine.add_request("long", list(range(5, 200)), greedy(2))
            with pytest.raises(ValueError, match="already in use"):
                first = await engine.add_request("dup", "x", greedy(50))
                await engine.add_request("dup", "y", greedy(2))
            engine.abort("dup")
            assert first.request_id == "dup"
            await wait_idle(engine)

            # n > 1 fans out; seeded children differ from each other.
            texts = {}
            async for out in engine.generate("Zebra", SamplingParams(
                    n=3, temperature=1.5, seed=5, max_tokens=8, ignore_eos=True)):
                for c in out.outputs:
                    texts[c.index] = texts.get(c.index, "") + c.text
            assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) > 1
        assert not engine.is_running

    asyncio.run(main())


def test_full_queue_raises_queue_full():
    async def main():
        args = EngineArgs(**ARGS, max_num_seqs=1, max_waiting_requests=1)
        async with AsyncEngine(args) as engine:
            running = await engine.add_request("a", "The", greedy(60))
            while engine.engine_stats.get("num_running") != 1:
                await asyncio.sleep(0.01)
            waiting = await engine.add_request("b", "The", greedy(2))
            with pytest.raises(QueueFullError, match="waiting queue is full"):
                await engine.add_request("c", "The", greedy(2))
            outs = [o async for o in running] + [o async for o in waiting]
            assert sum(len(o.outputs[0].token_ids) for o in outs) == 62

    asyncio.run(main())


def test_dead_engine_core_fails_pending_requests():
    async def main():
        engine = await AsyncEngine.from_engine_args(EngineArgs(**ARGS))
        died = asyncio.Event()
        engine.on_dead(lambda reason: died.set())
        stream = await engine.add_request("r", "The", greedy(120))
        await stream.__anext__()
        os.kill(engine.info.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="exit code -9"):
            async for _ in stream:
                pass
        await asyncio.wait_for(died.wait(), 10)
        assert not engine.is_running and "exit code -9" in engine.dead_reason
        with pytest.raises(EngineDeadError):
            await engine.add_request("s", "The", greedy(2))
        await engine.shutdown()

    asyncio.run(main())


def model_with_architecture(root: Path, architecture: str) -> str:
    """The embedded model under another ``architectures`` name (its files linked, not copied)."""
    root.mkdir()
    for path in Path(DEFAULT_MODEL_PATH).iterdir():
        if path.name != "config.json":
            (root / path.name).symlink_to(path)
    config = json.loads((Path(DEFAULT_MODEL_PATH) / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
    return str(root)


@pytest.mark.parametrize("case", ["architecture", "max_model_len", "device"])
def test_arguments_the_core_rejects_raise_value_error_from_start(case, tmp_path):
    """The front end only checks each value; the core resolves them against the model and the
    machine, and its refusal reaches ``start()`` as the ValueError it raised."""
    args, message = {
        "architecture": (dict(ARGS, model=model_with_architecture(tmp_path / "m", "NoSuchLM")),
                         r"model architecture \['NoSuchLM'\] is not supported. "
                         r"Supported: .*LlamaForCausalLM"),
        "max_model_len": (dict(ARGS, max_model_len=4096),
                          r"max_model_len must be in \[1, 2048\] .*got 4096"),
        "device": (dict(ARGS, device="no-such-device"),
                   r"device must be 'auto' or one of \[.*'cpu'.*\], got 'no-such-device'"),
    }[case]

    async def main():
        engine = AsyncEngine(EngineArgs(**args))
        with pytest.raises(RuntimeError, match="not started"):
            engine.config
        with pytest.raises(ValueError, match=message):
            await engine.start()
        assert engine._proc.wait(10) == 1 and not engine.is_running

    asyncio.run(main())


def test_from_engine_args_raises_what_the_core_rejected():
    async def main():
        with pytest.raises(ValueError, match="max_model_len must be in"):
            await AsyncEngine.from_engine_args(EngineArgs(**dict(ARGS, max_model_len=9999)))

    asyncio.run(main())


def test_ready_message_carries_the_resolved_config_and_model_facts():
    async def main():
        async with AsyncEngine(EngineArgs(**ARGS, served_model_name="tiny")) as engine:
            config, facts = engine.config, engine.info.model
            assert config.model.model == str(DEFAULT_MODEL_PATH)
            assert config.model.served_model_name == "tiny" and config.device == "cpu"
            assert config.model.max_model_len == engine.max_model_len == 128
            assert (facts.vocab_size, facts.tokenizer, facts.eos_token_id) == (
                4096, str(DEFAULT_MODEL_PATH), 2)
            assert engine.vocab_size == 4096 and engine.frontend.eos_token_ids == {2}
            assert engine.tokenizer.eos_token_id == 2
            with pytest.raises(Exception, match="frozen"):
                config.model.max_model_len = 1

    asyncio.run(main())


def test_constrained_requests_are_acknowledged_once_their_grammar_compiled():
    """A bad grammar is refused like any bad request (ValueError before a stream exists) and
    leaves nothing in the core; a good one is served under its constraint, n>1 included."""
    from llmserve.structured_output import StructuredOutputsParams

    async def main():
        async with AsyncEngine(EngineArgs(num_gpu_blocks_override=64)) as engine:
            with pytest.raises(ValueError, match="cannot compile the regex constraint"):
                await engine.add_request("bad", "x", SamplingParams(
                    structured_outputs=StructuredOutputsParams(regex="((("), n=2))
            texts = []
            params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12,
                                    structured_outputs=StructuredOutputsParams(
                                        choice=["alpha", "beta", "gamma"]))
            async for out in engine.generate("The answer is", params, "good",
                                             output_kind=RequestOutputKind.FINAL_ONLY):
                texts = [(c.text, c.finish_reason) for c in out.outputs]
            assert len(texts) == 3
            assert all(text in ("alpha", "beta", "gamma") and reason == "stop"
                       for text, reason in texts), texts
            stats = await wait_idle(engine)
            assert stats["num_waiting"] == 0 and stats["num_free_blocks"] == 64

    asyncio.run(main())
