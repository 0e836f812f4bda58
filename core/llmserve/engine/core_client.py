"""``CoreClient``: one engine-core child process and the two pipes that join it to the front end.

The core runs as ``python -m llmserve.engine.core_process`` (a fresh interpreter) and speaks
the protocol documented there. A writer thread sends what ``send`` queued, so the event loop
never blocks on a full pipe; a reader thread hands every message to the event loop as
``on_message(index, message, now)`` and, unless the client is stopping the process, reports
its death once as ``on_dead(index, reason)``. ``AsyncEngine`` owns one client per engine
core: one, or ``data_parallel_size`` replicas.
"""

from __future__ import annotations

import atexit
import multiprocessing
import queue
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from llmserve.engine.core_process import EngineInfo

OnMessage = Callable[[int, Any, float], None]
OnDead = Callable[[int, str], None]


class CoreClient:
    """The process of engine core ``index``: start, send, receive, stop."""

    def __init__(self, index: int, on_message: OnMessage, on_dead: OnDead) -> None:
        self.index = index
        #: True once the front end stops the process: its exit is then no death to report.
        self.closing = False
        self._on_message = on_message
        self._on_dead = on_dead
        self.proc: Optional[subprocess.Popen] = None
        self._input_conn = None
        self._output_conn = None
        self._send_queue: "queue.SimpleQueue" = queue.SimpleQueue()

    @property
    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, engine_args: dict[str, Any], log_level: int) -> None:
        """Start the process and send it the "init" message (does not wait for it)."""
        core_input_r, core_input_w = multiprocessing.Pipe(duplex=False)
        core_output_r, core_output_w = multiprocessing.Pipe(duplex=False)
        child_fds = (core_input_r.fileno(), core_output_w.fileno())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.engine.core_process", *map(str, child_fds)],
            pass_fds=child_fds, close_fds=True)
        # Close our copies of the child's ends, so either side sees EOF when the other dies.
        core_input_r.close()
        core_output_w.close()
        self._input_conn, self._output_conn = core_input_w, core_output_r
        _track_live_client(self)
        core_input_w.send(("init", engine_args, log_level))

    def wait_ready(self, timeout_s: float) -> EngineInfo:
        """Block until the core reports "ready" (run it in an executor).

        Raises ``ValueError`` when the core rejected the arguments, ``RuntimeError`` when it
        failed, exited or took longer than ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        conn, proc = self._output_conn, self.proc
        while time.monotonic() < deadline:
            try:
                if conn.poll(0.2):
                    message = conn.recv()
                    if message[0] == "ready":
                        return EngineInfo.from_message(message[1])
                    _, kind, text = message
                    if kind == "invalid":
                        raise ValueError(text)
                    raise RuntimeError(f"the engine core failed to start: {text}")
            except (EOFError, OSError):
                raise RuntimeError(f"the engine core exited during start-up "
                                   f"(exit code {wait_process(proc, 5)})") from None
            if proc.poll() is not None:
                raise RuntimeError(f"the engine core exited during start-up "
                                   f"(exit code {proc.returncode})")
        raise RuntimeError(f"the engine core did not start within {timeout_s:.0f} s")

    def start_threads(self, loop) -> None:
        """Start the writer and the reader; messages then reach ``loop``."""
        suffix = f"-{self.index}" if self.index else ""
        threading.Thread(target=self._writer, name=f"llmserve-engine-writer{suffix}",
                         daemon=True).start()
        threading.Thread(target=self._reader, args=(loop,),
                         name=f"llmserve-engine-reader{suffix}", daemon=True).start()

    def send(self, message) -> None:
        self._send_queue.put(message)

    def request_shutdown(self) -> None:
        """Ask the core to finish its loop and exit (``close`` then waits for it)."""
        if not self.closing and self.is_alive:
            self._send_queue.put(("shutdown",))
            self._send_queue.put(None)
        self.closing = True

    def close(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a requested exit, then kill what is left (blocks)."""
        self.request_shutdown()
        if self.is_alive:
            wait_process(self.proc, timeout_s)
        self.kill()

    def kill(self) -> None:
        """Last resort, and the cleanup after a normal stop."""
        self.closing = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            if wait_process(proc, 5) is None:
                proc.kill()
                wait_process(proc, 5)
        for conn in (self._input_conn, self._output_conn):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        _live_clients.discard(self)

    # -- the threads ----------------------------------------------------------------------

    def _writer(self) -> None:
        conn = self._input_conn
        while True:
            message = self._send_queue.get()
            if message is None:
                return
            try:
                conn.send(message)
            except (OSError, ValueError):
                return  # the reader sees the EOF and reports the death

    def _reader(self, loop) -> None:
        conn, index = self._output_conn, self.index
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError, ValueError):
                if not self.closing:
                    code = wait_process(self.proc, 2)
                    reason = f"engine core process exited (exit code {code})"
                    _call_soon(loop, self._on_dead, index, reason)
                return
            if not _call_soon(loop, self._on_message, index, message, time.monotonic()):
                return


def _call_soon(loop, fn, *args) -> bool:
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:  # the loop is closed
        return False


def wait_process(proc: subprocess.Popen, timeout_s: float) -> Optional[int]:
    """The exit code, or None if the process still runs after ``timeout_s``."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


#: Clients whose core process may still run; stopped at interpreter exit so that
#: multiprocessing's own exit handler (which joins child processes) never waits forever.
_live_clients: "weakref.WeakSet[CoreClient]" = weakref.WeakSet()
_atexit_registered = False


def _track_live_client(client: CoreClient) -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_stop_live_clients)
        _atexit_registered = True
    _live_clients.add(client)


def _stop_live_clients() -> None:
    clients = list(_live_clients)
    for client in clients:
        client.request_shutdown()
    for client in clients:
        try:
            client.close(5.0)
        except Exception:  # noqa: BLE001
            pass
