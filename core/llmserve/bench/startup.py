"""Startup time: from launching a fresh Python process to its first generated token.

``llmserve bench startup`` runs this module as a child process with the parent's launch time
in ``LLMSERVE_BENCH_T0``; the child builds the engine, generates one token and prints the
elapsed wall time, so imports, weight loading, profiling and graph capture all count.
"""

from __future__ import annotations

import json
import os
import sys
import time


def measure_in_child(engine_kwargs: dict) -> dict:
    t0 = float(os.environ["LLMSERVE_BENCH_T0"])
    from llmserve import LLM, SamplingParams

    llm = LLM(**engine_kwargs)
    t_ready = time.time()
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    llm.generate([[16, 17, 18, 19]], params, use_tqdm=False)
    t_first = time.time()
    core = llm.llm_engine.core
    return {"startup_s": round(t_first - t0, 3), "ready_s": round(t_ready - t0, 3),
            "engine_init_s": round(core.startup_s, 3),
            "warm_up_s": round(getattr(core, "warm_up_s", 0.0), 3)}


def run(engine_kwargs: dict) -> dict:
    """Launch the child and return its figures."""
    import subprocess

    env = dict(os.environ, LLMSERVE_BENCH_T0=repr(time.time()))
    proc = subprocess.run([sys.executable, "-m", "llmserve.bench.startup",
                           json.dumps(engine_kwargs)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"startup child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure_in_child(json.loads(sys.argv[1]))))
