"""Real servers for the HTTP tests: ``python -m llmserve.cli.main serve`` on 127.0.0.1 and a
port the OS picks, always stopped (SIGTERM, then SIGKILL of its whole process group)."""

from __future__ import annotations

from typing import Optional

import httpx
import pytest
from http_helpers import API_KEY, SERVER_ARGS, Server, running_server


@pytest.fixture
def start_server(tmp_path):
    """``start_server(args, env=None, wait=True) -> Server``; every server is stopped at
    teardown."""
    servers: list[Server] = []

    def start(args: list[str], env: Optional[dict] = None, wait: bool = True) -> Server:
        server = Server(args, tmp_path / f"server{len(servers)}.log", env)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with running_server(SERVER_ARGS, tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def client(server):
    import openai

    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                       timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def http(server, auth):
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
        yield c
