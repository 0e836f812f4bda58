"""Start-up, SIGTERM draining, and the death of the engine-core process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

#: A small server: short context, small KV cache.
SMALL = ["--max-model-len", "128", "--kv-cache-memory", str(8 * 2**20)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


class StreamReader(threading.Thread):
    """Reads one streaming completion in the background, noting every event."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.events: list = []
        self.started = threading.Event()
        self.error = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/v1/completions",
                              json={**self.body, "stream": True}, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
                        self.started.set()
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.started.set()


def test_startup_banner(start_server):
    server = start_server(SMALL + ["--served-model-name", "tiny-llm"])
    log = server.log()
    assert "serving 'tiny-llm'" in log
    assert "device: cpu" in log
    assert "KV cache: 1024 tokens (64 blocks of 16)" in log  # 8 MiB / 8 KiB per token
    assert server.url in log
    models = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["tiny-llm"] and models[0]["max_model_len"] == 128


def test_bad_engine_flag_exits_2_with_its_message():
    proc = subprocess.run([sys.executable, "-m", "llmserve.cli.main", "serve", "--port", "0",
                           "--block-size", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "block_size" in proc.stderr


def test_argument_the_engine_core_rejects_exits_2_with_one_line():
    """max_model_len is checked against the model by the engine core, not the front end."""
    proc = subprocess.run([sys.executable, "-m", "llmserve.cli.main", "serve", "--port", "0",
                           "--max-model-len", "4096"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "llmserve serve: max_model_len must be in [1, 2048] (the model's "
        "max_position_embeddings), got 4096"]
    assert "API:" not in proc.stdout


def test_sigterm_drains_in_flight_streams_then_exits_0(start_server):
    server = start_server(SMALL)
    engine_pid = server.engine_pid()
    reader = StreamReader(server.url, {"prompt": "The", "max_tokens": 100, "ignore_eos": True})
    reader.start()
    assert reader.started.wait(60) and reader.events, reader.error
    server.proc.send_signal(signal.SIGTERM)
    reader.join(60)
    assert not reader.is_alive() and reader.error is None, reader.error
    # The in-flight request ran to its end: all 100 tokens, then [DONE].
    assert reader.events[-1] == "[DONE]"
    assert reader.events[-2]["choices"][0]["finish_reason"] == "length"
    assert server.proc.wait(30) == 0, server.log()
    assert wait_gone(engine_pid, 10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)


def test_engine_death_fails_requests_and_exits_nonzero(start_server):
    server = start_server(SMALL)
    engine_pid = server.engine_pid()
    reader = StreamReader(server.url, {"prompt": "The", "max_tokens": 120, "ignore_eos": True})
    reader.start()
    assert reader.started.wait(60) and reader.events
    os.kill(engine_pid, signal.SIGKILL)
    # The in-flight stream ends with an error event instead of hanging.
    reader.join(30)
    assert not reader.is_alive()
    errors = [e for e in reader.events if isinstance(e, dict) and "error" in e]
    assert errors and "engine core" in errors[0]["error"]["message"], reader.events[-3:]
    assert reader.events[-1] == "[DONE]"
    # Then the server exits non-zero, and stops answering /health.
    assert server.proc.wait(30) == 1, server.log()
    assert "the engine core died" in server.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)
