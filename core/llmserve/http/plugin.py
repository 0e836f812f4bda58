"""Hook implementations of the bundled HTTP plugin (one of ``DEFAULT_PLUGINS``)."""

from __future__ import annotations

import argparse

from llmserve.cli.command import CliCommand
from llmserve import hookimpl


class ServeCommand(CliCommand):
    name = "serve"
    help = "Serve a model over an OpenAI-compatible HTTP API (default: the embedded model)."
    description = (
        "Start the engine core in its own process and an OpenAI-compatible HTTP server "
        "(FastAPI + uvicorn) in front of it: /v1/models, /v1/completions, "
        "/v1/chat/completions (streaming or not), /tokenize, /detokenize, /health, /version, "
        "/metrics (Prometheus) and /docs; structured outputs and tool calls as vLLM serves "
        "them. Engine flags use vLLM's names."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from llmserve.http.server import add_server_arguments

        add_server_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from llmserve.http.server import run_server

        return run_server(args)


@hookimpl
def llmserve_cli_commands():
    return [ServeCommand()]


@hookimpl
def llmserve_http_routes(app, engine_client, config):
    from llmserve.http.routes import register_routes

    register_routes(app, engine_client, config)
