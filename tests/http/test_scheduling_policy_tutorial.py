"""The scheduling-policy tutorial works as written: its code blocks are the files of
``examples/scheduler_policy``, the example passes the conformance kit, and, installed into a
private folder (never the test environment), it is listed by ``llmserve plugins`` and serves
real requests through ``llmserve serve --scheduling-policy tenant-rr``."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from http_helpers import metric

from llmserve.plugin_api import PLUGIN_API_MODULES
from llmserve.plugin_testing.scheduling import check_scheduling_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scheduler_policy"
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial-scheduling-policy.md"
POLICY = "tenant-rr"
METRIC = "llmserve:tenant_admitted_total"
#: Files a build, a test run or an editor leaves in the example; not part of it.
_LITTER = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".benchmarks",
                                 ".pytest_cache")
_CAPTIONED = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```$", re.S | re.M)


def _example_files() -> set[str]:
    """The example's files, relative to the repository root, without build litter."""
    files = set()
    for path in EXAMPLE.rglob("*"):
        rel = path.relative_to(EXAMPLE)
        if path.is_file() and not _LITTER(str(path.parent), rel.parts):
            files.add(str(path.relative_to(ROOT)))
    return files


def test_tutorial_blocks_are_the_example_files():
    blocks = dict(_CAPTIONED.findall(TUTORIAL.read_text()))
    assert blocks, "no captioned code blocks in the tutorial"
    for rel, text in blocks.items():
        assert (ROOT / rel).read_text() == text, f"{rel} differs from its block in the tutorial"
    # Every file of the example is on the page, except the README pointing to it.
    assert _example_files() - {"examples/scheduler_policy/README.md"} == set(blocks)
    assert "tutorial-scheduling-policy.md" in (EXAMPLE / "README.md").read_text()


def test_example_passes_the_conformance_kit():
    spec = importlib.util.spec_from_file_location(
        "tutorial_tenant_rr", EXAMPLE / "llmserve_tenant_rr" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check_scheduling_policy(module.TenantRoundRobin)
    assert module.llmserve_scheduling_policies() == {POLICY: module.TenantRoundRobin}
    assert module.LLMSERVE_PLUGIN_API == ">=1.2,<2"
    # It imports only from the plugin API (api.md), like every plugin should.
    tree = ast.parse(Path(spec.origin).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    llmserve_modules = {m for m in imported if m.split(".")[0] == "llmserve"}
    assert llmserve_modules <= set(PLUGIN_API_MODULES), llmserve_modules


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The example installed with pip into a private folder (offline, no dependencies, no
    build isolation), and the environment that puts that folder on ``sys.path``."""
    tmp = tmp_path_factory.mktemp("tenant_rr")
    src = tmp / "src"  # a copy, so the build's egg-info and build/ stay out of the checkout
    shutil.copytree(EXAMPLE, src, ignore=_LITTER)
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                    "--target", str(site), str(src)], check=True, timeout=120,
                   env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(site) + (os.pathsep + path if path else "")}


def test_llmserve_plugins_lists_the_installed_example(plugin_env):
    out = subprocess.run([sys.executable, "-m", "llmserve.cli.main", "plugins"],
                         env={**os.environ, **plugin_env}, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "tenant-rr 0.1.0 (llmserve-tenant-rr), plugin API >=1.2,<2" in out, out
    assert "scheduling_policies: tenant-rr" in out, out


def _completion(url: str, body: dict, headers: dict | None = None) -> str:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 8, **body},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert text, r.text
    return text


def test_serve_with_the_example_policy(plugin_env, start_server):
    config = json.dumps({"quantum": 2, "default_tenant": "guests"})
    server = start_server(["--max-model-len", "256", "--scheduling-policy", POLICY,
                           "--scheduling-policy-config", config], env=plugin_env)
    _completion(server.url, {"user": "alice"})
    _completion(server.url, {}, headers={"X-Tenant": "bob"})
    _completion(server.url, {"user": "carol"}, headers={"X-Tenant": "bob"})  # the header wins
    _completion(server.url, {})
    expected = {"alice": 1.0, "bob": 2.0, "guests": 1.0}
    deadline = time.monotonic() + 10
    while True:  # the engine reports its statistics with its outputs; allow a late one
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        got = {t: metric(text, METRIC, f'tenant="{t}"', default=0.0) for t in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == expected, text
    assert f'{METRIC}{{model_name="default",tenant="alice"}} 1.0' in text
    assert 'tenant="carol"' not in text
    assert f"# TYPE {METRIC} counter" in text


@pytest.mark.parametrize("args, message", [
    (["--scheduling-policy", "tenant-robin"],
     "scheduling_policy must be one of the installed policies ["),
    (["--scheduling-policy", POLICY, "--scheduling-policy-config", '{"quantm": 2}'],
     "unknown option(s) ['quantm'] for policy 'tenant-rr'; its options are "
     "['default_tenant', 'quantum']"),
    (["--scheduling-policy", POLICY, "--scheduling-policy-config", '{"quantum": 0}'],
     "policy 'tenant-rr': quantum: Input should be greater than or equal to 1"),
], ids=["unknown-policy", "unknown-option", "out-of-range"])
def test_serve_refuses_a_bad_policy_setting(plugin_env, start_server, args, message):
    server = start_server(args, env=plugin_env, wait=False)
    rc = server.proc.wait(60)
    log = server.log()
    assert rc != 0, log
    assert message in log, log
    if args[1] == "tenant-robin":  # the list names the core's policies and the example's
        assert all(f"'{name}'" in log for name in ("fcfs", "priority", POLICY)), log
        assert "got 'tenant-robin'" in log, log
    assert "API: http" not in log, log
