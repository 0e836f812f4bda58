"""The ``triton`` plugin: registration, the installed entry point, and a cheap import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import llmserve_triton.plugin
from llmserve.plugin_testing import fresh_plugin_manager
from llmserve.plugins import collect_registry, register_plugin


def test_plugin_contributes_the_triton_backend():
    from llmserve_triton.backend import TritonPagedAttention

    pm = fresh_plugin_manager()
    register_plugin(pm, llmserve_triton.plugin, "triton")
    backends = collect_registry(pm, "llmserve_attention_backends")
    assert backends["triton"] is TritonPagedAttention
    assert TritonPagedAttention.name == "triton"
    assert "torch" in backends


def test_entry_point_is_installed():
    # Fails (rather than skips) when the distribution is not installed: CI installs it with
    # ``pip install -e plugins/kernels_triton``.
    dist = importlib.metadata.distribution("llmserve-triton")
    eps = [ep for ep in dist.entry_points if ep.group == "llmserve"]
    assert [(ep.name, ep.value) for ep in eps] == [("triton", "llmserve_triton.plugin")]
    assert eps[0].load() is llmserve_triton.plugin


def test_importing_the_plugin_does_not_import_triton():
    code = ("import sys, llmserve_triton, llmserve_triton.plugin; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
