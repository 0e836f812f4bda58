"""``llmserve serve`` on a tiny Mamba2 directory (HF config, safetensors, a real tokenizer)
answers an OpenAI chat request over loopback, streamed and not."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from llmserve.testing import train_tokenizer
from model_testutil import save_tiny
from transformers import Mamba2Config, Mamba2ForCausalLM

_URL = re.compile(r"API: (http://127\.0\.0\.1:\d+)/v1")


@pytest.fixture(scope="module")
def mamba2_chat_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mamba2-chat")
    tokenizer = train_tokenizer(512)
    config = Mamba2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                          num_heads=8, head_dim=16, n_groups=1, state_size=16, chunk_size=16,
                          bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    save_tiny(Mamba2ForCausalLM, config, path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(mamba2_chat_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-log") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli.main", "serve", str(mamba2_chat_dir),
             "--host", "127.0.0.1", "--port", "0", "--served-model-name", "tiny-mamba2",
             "--max-model-len", "256", "--max-num-seqs", "8"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _wait_ready(proc, log_path)
        yield url, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_ready(proc, log_path, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = _URL.search(log_path.read_text(errors="replace"))
        if m:
            url = m.group(1)
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')}")


CHAT = {"model": "tiny-mamba2", "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 12, "temperature": 0, "ignore_eos": True}


def test_chat_completion(server):
    url, _ = server
    response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12


def test_streamed_chat_equals_the_whole_answer(server):
    url, _ = server
    whole = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).json()
    pieces = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
