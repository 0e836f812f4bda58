"""The serving front end imports no model, layer, runner, platform, attention, KV-cache or
sampler code, and nothing of the plugin packages beyond their entry-point modules: the engine
core resolves the arguments and runs the model in its own process, and its ready message
tells the front end all it needs.

Each check runs in a fresh interpreter, so that nothing this test process imported counts.
The tokenizer is loaded in the front end through transformers, which imports torch itself;
torch is therefore not on the list.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import httpx
from http_helpers import API_KEY, Server

#: Packages the front end must never import (each with its submodules).
CORE_SIDE_PACKAGES = ("llmserve.models", "llmserve.layers", "llmserve.runner",
                      "llmserve.platforms", "llmserve.attention", "llmserve.kv_cache",
                      "llmserve.sample.sampler", "llmserve_nvidia", "llmserve_triton")

#: A request that brings back sampled and prompt logprobs, so that unpickling the core's
#: outputs is exercised too.
REQUEST = {"model": "default", "prompt": "The try statement", "max_tokens": 8,
           "temperature": 0, "logprobs": 2, "prompt_logprobs": 1}

ASYNC_ENGINE_SCRIPT = """
import asyncio, json, sys
from llmserve import SamplingParams
from llmserve.config import EngineArgs
from llmserve.engine.async_engine import AsyncEngine

async def main():
    async with AsyncEngine(EngineArgs(max_model_len=128, kv_cache_memory=8 * 2**20)) as engine:
        started = sorted(sys.modules)
        params = SamplingParams(temperature=0, max_tokens=8, logprobs=2, prompt_logprobs=1)
        outs = [out async for out in engine.generate("The try statement", params)]
        assert outs[-1].finished and outs[0].prompt_logprobs, outs
        print(json.dumps({"started": started, "served": sorted(sys.modules)}))

asyncio.run(main())
"""


def core_side(modules) -> list[str]:
    return sorted(m for m in modules
                  if any(m == p or m.startswith(p + ".") for p in CORE_SIDE_PACKAGES))


def entry_point_modules() -> set[str]:
    """The installed plugins' entry-point modules and their parent packages: the CLI and the
    HTTP app call hooks (subcommands, routes) on every plugin, which means importing these."""
    names: set[str] = set()
    for ep in importlib.metadata.entry_points(group="llmserve"):
        parts = ep.module.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def test_async_engine_front_end_imports_no_core_side_code():
    proc = subprocess.run([sys.executable, "-c", ASYNC_ENGINE_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "llmserve.engine.async_engine" in modules["started"]
    assert core_side(modules["started"]) == []
    assert core_side(modules["served"]) == []
    assert "llmserve.engine.resolver" not in modules["served"]


def test_serve_front_end_imports_no_core_side_code(tmp_path):
    """The real ``llmserve serve`` start-up path (CLI, plugin manager, app, routes), with every
    module it imports logged by ``-X importtime``."""
    server = Server(["--max-model-len", "128", "--kv-cache-memory", str(8 * 2**20),
                     "--api-key", API_KEY], tmp_path / "server.log",
                    python_options=["-X", "importtime"])
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/v1/completions", json=REQUEST, timeout=60,
                       headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["logprobs"]["top_logprobs"]
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", server.log(),
                          re.MULTILINE)
    assert "llmserve.http.routes" in imported and "uvicorn" in imported
    assert [m for m in core_side(imported) if m not in entry_point_modules()] == []
    assert "llmserve.engine.resolver" not in imported
