"""Helpers of the HTTP tests (importable from test modules; fixtures are in conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import httpx

API_KEY = "test-key-123"
#: The session server: the embedded model, small context, room for 200+ concurrent streams.
SERVER_ARGS = ["--max-model-len", "256", "--max-num-seqs", "256", "--kv-cache-memory",
               str(128 * 2**20), "--api-key", API_KEY]
_URL = re.compile(r"API: (http://127\.0\.0\.1:\d+)/v1")


class Server:
    """One ``llmserve serve`` process; its combined output goes to a log file (a pipe could
    fill up and block it)."""

    def __init__(self, args: list[str], log_path: Path, env: Optional[dict] = None,
                 python_options: Sequence[str] = ()) -> None:
        """``python_options`` go to the interpreter before ``-m`` (``-X importtime``)."""
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, *python_options, "-m", "llmserve.cli.main", "serve",
               "--host", "127.0.0.1", "--port", "0", "--uvicorn-log-level", "warning",
               "--disable-uvicorn-access-log", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.url = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> "Server":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = _URL.search(self.log())
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"server did not start in {timeout_s} s:\n{self.log()}")
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server never became healthy:\n{self.log()}")

    def engine_pid(self) -> int:
        m = re.search(r"engine core pid (\d+)", self.log())
        assert m, self.log()
        return int(m.group(1))

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # the engine core and anything else of this session, whatever happened above
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def metric(text: str, name: str, labels: str = "", default: Optional[float] = None) -> float:
    """The value of one sample in Prometheus text (summed over the label sets that contain
    ``labels``); ``default`` if there is none, else an assertion error."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and labels in rest:
            total += float(value)
            found = True
    if not found and default is not None:
        return default
    assert found, f"{name} not in metrics"
    return total


@contextmanager
def running_server(args: list[str], log_dir: Path) -> Iterator[Server]:
    """A started, healthy server for a ``with`` block (module- and session-scoped
    fixtures); stopped however the block ends."""
    server = Server(args, log_dir / "server.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()
