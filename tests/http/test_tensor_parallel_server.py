"""``llmserve serve --tensor-parallel-size 2`` on the embedded model: it answers as one rank
does, and a killed worker rank makes the server exit with a clear error within seconds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from llmserve import LLM, SamplingParams

ARGS = ["--max-model-len", "256", "--kv-cache-memory", str(16 << 20),
        "--tensor-parallel-size", "2"]
PROMPT = "Once upon a time"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _worker_pids(engine_pid: int) -> list[int]:
    return [p for p in _children(engine_pid)
            if b"llmserve.executor.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_tensor_parallel_server_answers_then_dies_cleanly(start_server):
    server = start_server(ARGS)
    engine_pid = server.engine_pid()
    workers = _worker_pids(engine_pid)
    assert len(workers) == 2

    body = {"model": "default", "prompt": PROMPT, "max_tokens": 16, "temperature": 0,
            "ignore_eos": True}
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    one_rank = LLM(max_model_len=256).generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
        use_tqdm=False)[0].outputs[0].text
    assert reply.json()["choices"][0]["text"] == one_rank

    os.kill(workers[1], signal.SIGKILL)
    start = time.monotonic()
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert reply.status_code >= 500
    assert server.proc.wait(30) == 1, server.log()
    assert time.monotonic() - start < 15
    log = server.log()
    assert "worker rank 1" in log and "exited with code -9" in log, log[-2000:]
    # The engine core and its surviving rank are gone too.
    assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in [engine_pid, *workers])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
