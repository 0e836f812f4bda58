"""Test helpers for plugins: a fresh plugin manager and a plugin registered for one test.

Plain functions work anywhere; the pytest fixtures need pytest (a test dependency only).
Use the fixtures by importing them into a test module or a conftest::

    from llmserve.plugin_testing import llmserve_pm, add_plugin  # noqa: F401

    def test_my_policy(add_plugin, llmserve_pm):
        add_plugin(MyPlugin())
        assert "mine" in collect_registry(llmserve_pm, "llmserve_scheduling_policies")

or load them all with ``pytest_plugins = ["llmserve.plugin_testing"]`` in a conftest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from llmserve.plugins import PluginManager, get_plugin_manager, register_plugin

__all__ = ["add_plugin", "fresh_plugin_manager", "llmserve_pm", "register_plugin",
           "registered_plugin"]


def fresh_plugin_manager(default_plugins: bool = True) -> PluginManager:
    """A manager with the core's defaults (optional) and no installed entry points, so a test
    sees only the plugins it registers."""
    return get_plugin_manager(load_entry_points=False, default_plugins=default_plugins)


@contextlib.contextmanager
def registered_plugin(pm: PluginManager, plugin: object,
                      name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` (validated like an installed one) for the ``with`` block."""
    registered = register_plugin(pm, plugin, name)
    try:
        yield registered
    finally:
        pm.unregister(name=registered)


@pytest.fixture
def llmserve_pm() -> PluginManager:
    """A fresh plugin manager for one test: core defaults, no installed entry points."""
    return fresh_plugin_manager()


@pytest.fixture
def add_plugin(llmserve_pm: PluginManager):
    """``add_plugin(obj, name=None) -> name`` registers ``obj`` on ``llmserve_pm`` for one
    test; it is unregistered at teardown. A misspelled hook raises at registration."""
    with contextlib.ExitStack() as stack:
        def add(plugin: object, name: str | None = None) -> str:
            return stack.enter_context(registered_plugin(llmserve_pm, plugin, name))

        yield add
