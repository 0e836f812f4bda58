"""``llmserve serve``: start the engine core process, then serve the app with uvicorn.

Life cycle:

- start-up: check the engine arguments, start the core process (``--data-parallel-size N``:
  N of them behind this one server), which resolves them against the model and the machine,
  and wait for its KV cache (a bad value, found either here or by the core, exits 2 with its
  message on one line), bind the socket, print model / device / KV capacity / URL, serve;
- SIGTERM or Ctrl-C: uvicorn stops accepting connections and lets in-flight requests finish
  (``--shutdown-timeout`` bounds the wait), then the core is stopped and the process exits 0;
- a core process (any replica) dies: ``/health`` answers 503, pending requests fail, the
  server shuts down and the process exits 1 (a supervisor restarts it instead of it hanging).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Optional

#: Waiting-queue bound of the server when ``--max-waiting-requests`` is not given.
DEFAULT_MAX_WAITING_REQUESTS = 1024
API_KEY_ENV = "LLMSERVE_API_KEY"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    from llmserve.cli.engine_args import add_engine_args

    parser.add_argument("model", nargs="?", default=None,
                        help="HF model directory or hub id (default: the embedded model)")
    parser.add_argument("--model", dest="model_option", default=None,
                        help="the same as the positional MODEL")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="(default: 8000; 0 picks one)")
    parser.add_argument("--api-key", action="append", default=None,
                        help=f"require this bearer key on /v1 (repeatable; also ${API_KEY_ENV})")
    parser.add_argument("--chat-template", default=None,
                        help="a Jinja chat template, or the path of a file holding one")
    parser.add_argument("--enable-auto-tool-choice", action="store_true",
                        help='allow tool_choice "auto" (needs --tool-call-parser)')
    parser.add_argument("--tool-call-parser", default=None, metavar="NAME",
                        help="how the model writes tool calls: a parser contributed through "
                             "llmserve_tool_parsers (built in: hermes, llama3_json)")
    parser.add_argument("--uvicorn-log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    parser.add_argument("--shutdown-timeout", type=int, default=60,
                        help="seconds SIGTERM waits for in-flight requests (default: 60)")
    add_engine_args(parser)


def load_chat_template(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    path = Path(value)
    if len(value) < 4096 and path.is_file():
        return path.read_text()
    return value


def check_tool_options(args: argparse.Namespace) -> None:
    """``--enable-auto-tool-choice`` needs a parser, and the parser must exist: ``ValueError``
    otherwise, before anything starts."""
    from llmserve.http.tool_calls import resolve_tool_parser
    from llmserve.plugins import get_plugin_manager

    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser NAME")
    pm = getattr(args, "plugin_manager", None) or get_plugin_manager()
    resolve_tool_parser(pm, args.tool_call_parser)


def run_server(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from llmserve.cli.engine_args import engine_args_from
    from llmserve.engine.async_engine import AsyncEngine

    try:
        check_tool_options(args)
        engine_args = engine_args_from(args, args.model_option or args.model)
        if engine_args.max_waiting_requests is None:
            engine_args = engine_args.model_copy(
                update={"max_waiting_requests": DEFAULT_MAX_WAITING_REQUESTS})
        api_keys = list(args.api_key or [])
        if os.environ.get(API_KEY_ENV):
            api_keys.append(os.environ[API_KEY_ENV])
        log_level = logging.getLogger().getEffectiveLevel()
        engine = AsyncEngine(engine_args, log_level=log_level)
    except (ValueError, ValidationError) as exc:
        print(f"llmserve serve: {exc}", file=sys.stderr)
        return 2
    state: dict = {}
    previous = {sig: signal.signal(sig, _make_signal_handler(state))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return asyncio.run(_serve(engine, args, api_keys, state))
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _make_signal_handler(state: dict):
    """Before serving, SIGINT/SIGTERM stop start-up. uvicorn installs its own handlers while
    it serves and re-raises the signal after its graceful shutdown: ignore that one."""

    def handler(signum, frame):
        server = state.get("server")
        if server is not None and server.should_exit:
            return
        raise KeyboardInterrupt

    return handler


async def _serve(engine, args: argparse.Namespace, api_keys: list[str], state: dict) -> int:
    import uvicorn

    from llmserve import __version__
    from llmserve.http.app import build_app
    from llmserve.http.metrics import ServerMetrics

    try:
        await engine.start()
    except ValueError as exc:
        print(f"llmserve serve: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"llmserve serve: {exc}", file=sys.stderr)
        return 1
    metrics = ServerMetrics(engine.config.model.served_model_name,
                            num_engines=len(engine.replica_infos))
    engine.stat_logger = metrics
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"llmserve serve: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        await engine.shutdown()
        return 1
    app = build_app(engine, getattr(args, "plugin_manager", None), api_keys=api_keys,
                    chat_template=load_chat_template(args.chat_template), metrics=metrics,
                    tool_call_parser=args.tool_call_parser,
                    enable_auto_tool_choice=args.enable_auto_tool_choice)
    config = uvicorn.Config(app, log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    server = uvicorn.Server(config)
    state["server"] = server

    def on_dead(reason: str) -> None:
        state["dead"] = reason
        server.should_exit = True

    engine.on_dead(on_dead)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    cfg = engine.config
    print(f"llmserve {__version__}: serving {cfg.model.served_model_name!r} "
          f"({cfg.model.model})\n"
          f"{_describe_cores(engine.replica_infos, cfg)}\n"
          f"  API: http://{url_host}:{port}/v1 (docs /docs, metrics /metrics"
          f"{', API key required' if api_keys else ''})", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        await engine.shutdown()
    if state.get("dead"):
        print(f"llmserve serve: the engine core died ({state['dead']}); exiting",
              file=sys.stderr, flush=True)
        return 1
    return 0


def _describe_cores(infos: list, cfg) -> str:
    """The start-up lines about the engine core, or about each data-parallel replica (its
    device, pid and KV cache) and their KV capacity in all."""
    model = f"dtype {cfg.model.dtype}, max_model_len {cfg.model.max_model_len}"
    if len(infos) == 1:
        info = infos[0]
        return (f"  device: {info.device}, {model}, engine core pid {info.pid}\n"
                f"  KV cache: {info.kv_capacity_tokens} tokens ({info.num_blocks} blocks of "
                f"{info.block_size})")
    total = sum(info.kv_capacity_tokens for info in infos)
    lines = [f"  {model}, data parallel: {len(infos)} engine cores, KV cache {total} "
             f"tokens in all"]
    lines += [f"  engine {i}: device {info.device}, pid {info.pid}, KV cache "
              f"{info.kv_capacity_tokens} tokens ({info.num_blocks} blocks of "
              f"{info.block_size})" for i, info in enumerate(infos)]
    return "\n".join(lines)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
