"""The application without a real engine: /health after the engine died, the API-key check,
and that other plugins' routes arrive through the ``llmserve_http_routes`` hook."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from llmserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from llmserve.http.app import APIKeyMiddleware, build_app
from llmserve.plugin_testing import registered_plugin
from llmserve.plugins import get_plugin_manager, hookimpl


def fake_engine(is_running: bool, dead_reason=None):
    config = EngineConfig(
        model=ModelConfig(model="/m", tokenizer="/m", dtype="float32", max_model_len=64,
                          architecture="LlamaForCausalLM", served_model_name="fake"),
        cache=CacheConfig(), scheduler=SchedulerConfig(max_model_len=64), device="cpu")

    async def shutdown():
        pass

    return SimpleNamespace(is_running=is_running, dead_reason=dead_reason, config=config,
                           tokenizer=None, max_model_len=64, vocab_size=10, shutdown=shutdown)


def test_health_is_503_once_the_engine_died():
    app = build_app(fake_engine(False, "engine core process exited (exit code -9)"),
                    get_plugin_manager(load_entry_points=False))
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["error"]["message"] == ("the engine core is not running: engine core "
                                                "process exited (exit code -9)")
        assert c.get("/v1/models").json()["data"][0]["id"] == "fake"


def test_health_is_200_while_the_engine_runs():
    app = build_app(fake_engine(True), get_plugin_manager(load_entry_points=False))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200


def test_plugins_add_routes_through_the_hook():
    class ExtraRoutes:
        @hookimpl
        def llmserve_http_routes(self, app, config):
            @app.get("/v1/engine_info")
            async def engine_info():
                return {"model": config.model.served_model_name}

    pm = get_plugin_manager(load_entry_points=False)
    with registered_plugin(pm, ExtraRoutes(), "extra"):
        app = build_app(fake_engine(True), pm, api_keys=["k"])
        with TestClient(app) as c:
            assert c.get("/v1/engine_info").status_code == 401  # under /v1: key required
            r = c.get("/v1/engine_info", headers={"Authorization": "Bearer k"})
            assert r.json() == {"model": "fake"}


@pytest.mark.parametrize("token, ok", [(b"k1", True), (b"k2", True), (b"k", False),
                                       (b"k1 ", False), (b"", False)])
def test_api_key_check(token, ok):
    assert APIKeyMiddleware(None, ["k1", "k2"]).is_valid(token) is ok
