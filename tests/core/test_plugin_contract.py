"""The typed, versioned plugin contract.

What each contribute hook's entries must be (checked entry by entry when a registry is built),
the base classes and the model protocol plugins implement, the plugin API version and the
ranges plugins declare, deprecation through pluggy's ``warn_on_impl``, the context scheduling
policies decide from, and the list of modules that form the plugin API.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import logging
import re
import textwrap
import time
import tomllib
import types
import warnings
from pathlib import Path

import pytest
import torch

import llmserve
from llmserve import hookspecs, plugin_api
from llmserve.attention.backend import AttentionBackend
from llmserve.attention.torch_ref import TorchPagedAttention
from llmserve.cli.command import CliCommand
from llmserve.config import EngineArgs, SchedulerConfig
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.spec import BUILTIN_CACHE_SPECS, FullAttentionSpec
from llmserve.models.llama import LlamaForCausalLM
from llmserve.structured_output.backends.xgrammar import XgrammarBackend
from llmserve.platforms.base import Platform
from llmserve.plugin_markers import hookspec
from llmserve.plugin_testing import fresh_plugin_manager
from llmserve.plugins import (
    ENTRY_TYPES,
    PluginSource,
    collect_list,
    collect_registry,
    get_plugin_manager,
    hookimpl,
    register_plugin,
)
from llmserve.request import EngineCoreRequest, Request
from llmserve.sample.logits_processor import LogitsProcessor
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import ModelRunnerOutput
from llmserve.scheduler.policy import FCFSPolicy, SchedulingContext, SchedulingPolicy
from llmserve.scheduler.scheduler import Scheduler
from llmserve.spec_decode.ngram import NgramProposer
from llmserve.tool_parsers.hermes import HermesToolParser
from plugin_dists import make_plugin_env, write_dist

REPO = Path(__file__).resolve().parents[2]
PLUGIN_PACKAGES = {
    "llmserve_triton": REPO / "plugins" / "kernels_triton",
    "llmserve_nvidia": REPO / "plugins" / "hardware_nvidia",
    "llmserve_amd": REPO / "plugins" / "hardware_amd",
    "llmserve_schedulers": REPO / "plugins" / "schedulers",
}


def _plugin(**hooks) -> object:
    """A plugin object whose attributes are the given functions, marked as hookimpls."""
    return type("TestPlugin", (), {
        name: staticmethod(fn if hasattr(fn, "llmserve_impl") else hookimpl(fn))
        for name, fn in hooks.items()})()


# --------------------------------------------------------------------------------------------
# Entry types: every registry rejects a contribution of the wrong type
# --------------------------------------------------------------------------------------------


class ToyPlatform(Platform):
    name = "toy"


class ToyBackend(TorchPagedAttention):
    name = "toy"


class ToyPolicy(FCFSPolicy):
    name = "toy"


class ToyProcessor(LogitsProcessor):
    def apply(self, logits, md):
        return logits


class ToyCommand(CliCommand):
    name = "toy"


class HalfAModel(torch.nn.Module):
    """Has forward (from nn.Module) and compute_logits, lacks the rest of CausalLM."""

    def compute_logits(self, hidden):
        return hidden


#: hook -> (a right entry, a wrong one, what the warning must say about the wrong one).
CASES = {
    "llmserve_platforms": (
        ToyPlatform, str,
        "entry 'str' is class builtins.str, expected a subclass of "
        "llmserve.platforms.base.Platform"),
    "llmserve_attention_backends": (
        ToyBackend, LlamaForCausalLM,
        "entry 'bad' is class llmserve.models.llama.LlamaForCausalLM, expected a subclass of "
        "llmserve.attention.backend.AttentionBackend"),
    "llmserve_model_architectures": (
        LlamaForCausalLM, HalfAModel,
        "entry 'bad' is class test_plugin_contract.HalfAModel, which lacks "
        "build_context_flags, cache_specs, load_weights; expected a class implementing "
        "llmserve.models.interface.CausalLM"),
    "llmserve_cache_specs": (
        FullAttentionSpec, FullAttentionSpec(16, 2, 8, 4),
        "entry 'bad' is a llmserve.kv_cache.spec.FullAttentionSpec (FullAttentionSpec("
        "block_size=16, num_kv_heads=2, head_size=8, dtype_bytes=4)), not a class; expected a "
        "subclass of llmserve.kv_cache.spec.CacheSpec"),
    "llmserve_scheduling_policies": (
        ToyPolicy, ToyProcessor,
        "entry 'bad' is class test_plugin_contract.ToyProcessor, expected a subclass of "
        "llmserve.scheduler.policy.SchedulingPolicy"),
    "llmserve_logits_processors": (
        ToyProcessor, ToyProcessor(),
        "entry 'bad' is a test_plugin_contract.ToyProcessor"),
    "llmserve_cli_commands": (
        ToyCommand(), ToyCommand,
        "entry 'toy' is class test_plugin_contract.ToyCommand, expected an instance of "
        "llmserve.cli.command.CliCommand"),
    "llmserve_structured_output_backends": (
        XgrammarBackend, ToyPolicy,
        "entry 'bad' is class test_plugin_contract.ToyPolicy, expected a subclass of "
        "llmserve.structured_output.backend.StructuredOutputBackend"),
    "llmserve_tool_parsers": (
        HermesToolParser, HermesToolParser(None),
        "entry 'bad' is a llmserve.tool_parsers.hermes.HermesToolParser"),
    "llmserve_speculative_proposers": (
        NgramProposer, ToyPolicy,
        "entry 'bad' is class test_plugin_contract.ToyPolicy, expected a subclass of "
        "llmserve.spec_decode.proposer.Proposer"),
}


def _contribution(hook: str, *entries):
    if hook in ("llmserve_platforms", "llmserve_cli_commands"):
        return lambda: list(entries)
    names = ["good", "bad"]
    return lambda: dict(zip(names, entries))


def _collect(pm, hook: str):
    if hook in ("llmserve_platforms", "llmserve_cli_commands"):
        return collect_list(pm, hook)
    return collect_registry(pm, hook)


def test_every_contribute_hook_has_an_entry_type_matching_its_annotation():
    """The table the core enforces and the annotations plugin authors read say the same."""
    annotated = {}
    for name, fn in vars(hookspecs).items():
        if name.startswith("llmserve_") and hasattr(fn, "llmserve_spec"):
            returns = fn.__annotations__["return"]
            match = re.fullmatch(r"(?:dict\[str, |list\[)(?:type\[(\w+)\]|(\w+))\]", returns)
            if match:
                annotated[name] = (match.group(1) or match.group(2), match.group(2) is not None)
    assert annotated == {hook: (entry.base.partition(":")[2], entry.instances)
                         for hook, entry in ENTRY_TYPES.items()}
    assert set(CASES) == set(ENTRY_TYPES)


@pytest.mark.parametrize("hook", sorted(CASES))
def test_third_party_wrong_entry_is_skipped_and_the_rest_loads(hook, caplog):
    good, bad, expected_message = CASES[hook]
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(**{hook: _contribution(hook, good, bad)}), "sloppy")
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        collected = _collect(pm, hook)
    values = collected if isinstance(collected, list) else list(collected.values())
    assert values == [good]
    [record] = caplog.records
    assert record.message.startswith(f"llmserve plugin 'sloppy': {hook} {expected_message}")
    assert record.message.endswith("the entry is skipped")


@pytest.mark.parametrize("hook", sorted(CASES))
def test_core_default_wrong_entry_raises(hook):
    good, bad, expected_message = CASES[hook]
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(**{hook: _contribution(hook, good, bad)}), "core",
                    PluginSource(is_default=True))
    with pytest.raises(TypeError) as excinfo:
        _collect(pm, hook)
    assert str(excinfo.value).startswith(f"llmserve plugin 'core': {hook} {expected_message}")


def test_wrong_entry_does_not_shadow_the_default_of_the_same_name(caplog):
    pm = fresh_plugin_manager()
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"fcfs": object}), "bad")
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        policies = collect_registry(pm, "llmserve_scheduling_policies")
    assert policies["fcfs"] is FCFSPolicy
    assert "'fcfs' is class builtins.object" in caplog.text


def test_core_defaults_pass_their_own_checks():
    pm = get_plugin_manager(load_entry_points=False)
    assert [p.name for p in collect_list(pm, "llmserve_platforms")] == ["cpu"]
    assert collect_registry(pm, "llmserve_attention_backends") == {"torch": TorchPagedAttention}
    from llmserve.models.eagle import Eagle3LlamaForCausalLM, EagleLlamaForCausalLM

    assert set(collect_registry(pm, "llmserve_model_architectures").values()) == {
        LlamaForCausalLM, EagleLlamaForCausalLM, Eagle3LlamaForCausalLM}
    assert collect_registry(pm, "llmserve_cache_specs") == BUILTIN_CACHE_SPECS
    assert list(collect_registry(pm, "llmserve_scheduling_policies")) == ["fcfs", "priority"]
    assert [c.name for c in collect_list(pm, "llmserve_cli_commands")] == [
        "plugins", "generate", "bench", "serve"]


# --------------------------------------------------------------------------------------------
# Base classes and the model protocol
# --------------------------------------------------------------------------------------------


def test_scheduling_policy_is_abstract():
    class NoVictim(SchedulingPolicy):
        def add(self, request): ...
        def prepend(self, request): ...
        def peek(self, ctx): ...
        def pop(self, ctx): ...
        def remove(self, requests): ...
        def __len__(self): return 0
        def __iter__(self): return iter(())

    config = SchedulerConfig(max_model_len=64)
    with pytest.raises(TypeError, match="choose_victim"):
        NoVictim(config)
    assert FCFSPolicy(config).config is config


def test_attention_backend_is_abstract_and_keeps_sliding_window():
    class NoForward(AttentionBackend):
        name = "noforward"

    with pytest.raises(TypeError, match="forward"):
        NoForward(4, 8, 2, 0.5)
    assert TorchPagedAttention(4, 8, 2, 0.5, sliding_window=16).sliding_window == 16

    class Windowless(TorchPagedAttention):
        name = "windowless"
        supports_sliding_window = False

    with pytest.raises(ValueError, match="'windowless' does not support sliding-window"):
        Windowless(4, 8, 2, 0.5, sliding_window=16)


def test_loader_reads_context_flags_through_the_protocol(tmp_path):
    """``load_model`` calls ``build_context_flags`` unconditionally (no ``hasattr``) and hands
    its result to the model through ``ModelBuildContext.flags``."""
    from llmserve.models.loader import load_model

    seen = {}

    class Recorder(LlamaForCausalLM):
        @classmethod
        def build_context_flags(cls, cfg):
            return {"qkv_bias": False, "qk_norm": False, "recorded": True}

        def __init__(self, cfg, ctx):
            seen["flags"] = ctx.flags
            super().__init__(cfg, ctx)

    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
           "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 64, "rms_norm_eps": 1e-6}
    model = load_model(tmp_path, cfg, Recorder, torch.float32, torch.device("cpu"),
                       TorchPagedAttention, 64, load_format="dummy")
    assert seen["flags"] == {"qkv_bias": False, "qk_norm": False, "recorded": True}
    assert [type(s) for s in model.cache_specs(16)] == [FullAttentionSpec]


# --------------------------------------------------------------------------------------------
# Plugin API version and the ranges plugins declare
# --------------------------------------------------------------------------------------------


def test_plugin_api_version_is_exported():
    assert llmserve.PLUGIN_API_VERSION == "1.8" == plugin_api.PLUGIN_API_VERSION
    assert "PLUGIN_API_VERSION" in llmserve.__all__


def test_plugin_packages_declare_a_range_that_includes_the_running_version():
    from packaging.specifiers import SpecifierSet

    for package in PLUGIN_PACKAGES:
        module = importlib.import_module(f"{package}.plugin")
        assert llmserve.PLUGIN_API_VERSION in SpecifierSet(module.LLMSERVE_PLUGIN_API)


def test_packaging_is_a_declared_dependency_of_core():
    project = tomllib.loads((REPO / "core" / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"packaging\b", dep) for dep in project["dependencies"])


def _policy_plugin(declaration: str | None, policy: str) -> str:
    """A plugin module contributing one policy and one wrong entry."""
    header = ("from llmserve.plugins import hookimpl\n"
              "from llmserve.scheduler.policy import FCFSPolicy\n")
    if declaration is not None:
        header += f"LLMSERVE_PLUGIN_API = {declaration!r}\n"
    return header + textwrap.dedent(f"""

        class Policy(FCFSPolicy):
            name = {policy!r}


        @hookimpl
        def llmserve_scheduling_policies():
            return {{{policy!r}: Policy, "not-a-policy": dict}}
        """)


VERSIONED_DIST = "llmserve-testplugin-versioned"
VERSIONED_MODULES = {
    "current": _policy_plugin(">=1.0,<2", "current-policy"),
    "future": _policy_plugin(">=2.0", "future-policy"),
    "undeclared": _policy_plugin(None, "undeclared-policy"),
    "garbled": _policy_plugin("version one or later", "garbled-policy"),
}
VERSIONED = set(VERSIONED_MODULES)

DISCOVER = """\
    import json
    from llmserve.plugins import collect_registry, get_plugin_manager
    pm = get_plugin_manager()
    print(json.dumps({
        "names": [name for name, _ in pm.list_name_plugin()],
        "skipped": pm.skipped,
        "policies": sorted(collect_registry(pm, "llmserve_scheduling_policies")),
    }))
"""


@pytest.fixture(scope="module")
def versioned_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("versioned")
    dist = write_dist(tmp / "dist", VERSIONED_DIST, "1.2.3", VERSIONED_MODULES)
    env = make_plugin_env(tmp / "venv", [dist])
    yield env
    env.run(["-m", "pip", "uninstall", "--quiet", "-y", VERSIONED_DIST], check=False)


def test_plugins_outside_their_declared_range_are_skipped(versioned_env):
    out, stderr = versioned_env.run_script(DISCOVER, plugins=",".join(sorted(VERSIONED)))
    loaded = [name for name in out["names"] if name in VERSIONED]
    assert loaded == ["current", "undeclared"]
    assert set(out["skipped"]) == {"future", "garbled"}
    assert out["skipped"]["future"] == ("it supports plugin API '>=2.0' and this llmserve "
                                        "provides plugin API 1.8")
    assert out["skipped"]["garbled"] == ("LLMSERVE_PLUGIN_API = 'version one or later' is not "
                                         "a version range such as '>=1.0,<2'")
    assert re.search(r"plugin 'future' was skipped: .*'>=2.0'.*plugin API 1.8", stderr)
    # Loaded plugins' wrong entries go; their right ones stay.
    assert out["policies"] == ["current-policy", "fcfs", "priority", "undeclared-policy"]
    assert stderr.count("entry 'not-a-policy' is class builtins.dict") == 2


def test_plugin_without_a_declaration_loads_with_a_warning(versioned_env):
    out, stderr = versioned_env.run_script(DISCOVER, plugins="undeclared")
    assert "undeclared" in out["names"] and out["skipped"] == {}
    [warning] = [line for line in stderr.splitlines() if "declares no" in line]
    assert "'undeclared' declares no LLMSERVE_PLUGIN_API" in warning
    assert warning.endswith("loading it with plugin API 1.8")
    _, quiet = versioned_env.run_script(DISCOVER, plugins="current")
    assert "declares no" not in quiet


def test_plugins_command_shows_declared_ranges(versioned_env):
    proc = versioned_env.run(["-m", "llmserve.cli.main", "plugins"],
                             plugins="current,undeclared")
    lines = proc.stdout.splitlines()
    assert f"current 1.2.3 ({VERSIONED_DIST}), plugin API >=1.0,<2" in lines
    assert f"undeclared 1.2.3 ({VERSIONED_DIST}), plugin API undeclared" in lines
    assert "llmserve.default_plugins builtin" in lines
    proc = versioned_env.run(["-m", "llmserve.cli.main", "plugins", "--json"],
                             plugins="current,undeclared")
    by_name = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert by_name["current"]["plugin_api"] == ">=1.0,<2"
    assert by_name["undeclared"]["plugin_api"] is None


# --------------------------------------------------------------------------------------------
# Deprecations through pluggy's warn_on_impl
# --------------------------------------------------------------------------------------------


def _deprecation_specs() -> types.ModuleType:
    """A spec module the way a deprecation would be written in ``llmserve.hookspecs``."""
    specs = types.ModuleType("deprecated_specs")

    @hookspec(warn_on_impl=DeprecationWarning(
        "llmserve_old_hook is deprecated since plugin API 1.1 and goes in 2.0; "
        "use llmserve_new_hook"))
    def llmserve_old_hook() -> None:
        """Deprecated."""

    @hookspec(warn_on_impl_args={"legacy": DeprecationWarning(
        "llmserve_new_hook(legacy) is deprecated since plugin API 1.1 and goes in 2.0")})
    def llmserve_new_hook(config: object, legacy: object) -> None:
        """Current."""

    specs.llmserve_old_hook = llmserve_old_hook
    specs.llmserve_new_hook = llmserve_new_hook
    return specs


def test_deprecated_hook_warns_its_implementers_at_registration():
    pm = get_plugin_manager(load_entry_points=False)
    pm.add_hookspecs(_deprecation_specs())
    with pytest.warns(DeprecationWarning, match="llmserve_old_hook is deprecated since"):
        register_plugin(pm, _plugin(llmserve_old_hook=lambda: None), "old")
    with pytest.warns(DeprecationWarning, match=r"llmserve_new_hook\(legacy\) is deprecated"):
        register_plugin(pm, _plugin(llmserve_new_hook=lambda config, legacy: None), "legacy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_plugin(pm, _plugin(llmserve_new_hook=lambda config: None), "current")
    # Deprecated does not mean broken: the implementations are still called.
    assert pm.hook.llmserve_new_hook(config=1, legacy=2) == []
    assert pm.has_plugin("old") and pm.has_plugin("legacy")


def test_hookspecs_document_the_deprecation_policy():
    doc = hookspecs.__doc__
    assert "warn_on_impl=DeprecationWarning" in doc
    assert "at least one minor release" in doc
    assert "worker" not in doc.lower()
    assert "structured" not in doc.lower()
    for name, fn in vars(hookspecs).items():
        if name.startswith("llmserve_") and hasattr(fn, "llmserve_spec"):
            assert "worker" not in fn.__doc__, f"{name} speaks of worker processes"


# --------------------------------------------------------------------------------------------
# Scheduling policies receive a context
# --------------------------------------------------------------------------------------------


class RecordingPolicy(FCFSPolicy):
    """FCFS that records the context of every decision."""

    name = "recording"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.contexts: list[tuple[str, SchedulingContext]] = []

    def peek(self, ctx):
        self.contexts.append(("peek", ctx))
        return super().peek(ctx)

    def pop(self, ctx):
        self.contexts.append(("pop", ctx))
        return super().pop(ctx)

    def choose_victim(self, running, ctx):
        self.contexts.append(("choose_victim", ctx))
        return super().choose_victim(running, ctx)


def _request(rid: str, num_prompt_tokens: int, max_tokens: int) -> Request:
    prompt = [100 + sum(map(ord, rid)) * 50 + i for i in range(num_prompt_tokens)]
    return Request(EngineCoreRequest(rid, prompt, SamplingParams(max_tokens=max_tokens),
                                     eos_token_ids=frozenset({2}), arrival_time=0.0), 256)


def test_scheduler_passes_one_context_per_step_to_every_decision():
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=256)
    kv = KVCacheManager(4, 4, False)
    policy = RecordingPolicy(config)
    sched = Scheduler(config, kv, policy)
    # Two prompts of 8 tokens fill 2 blocks of 4 each: all 4 blocks are in use after step 1.
    sched.add_request(_request("a", 8, 8))
    sched.add_request(_request("b", 8, 8))
    before = time.monotonic()
    out = sched.schedule()
    after = time.monotonic()
    assert [kind for kind, _ in policy.contexts] == ["peek", "pop", "peek", "pop"]
    ctx = policy.contexts[0][1]
    assert all(c is ctx for _, c in policy.contexts)  # one snapshot per schedule()
    assert ctx.config is config
    assert (ctx.kv_cache_usage, ctx.num_free_blocks) == (0.0, 4)
    assert (ctx.num_running, ctx.num_waiting, ctx.num_budget_tokens) == (0, 2, 32)
    assert before <= ctx.now <= after
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.num_free_blocks = 0

    # Each samples a 9th token, which needs a 3rd block: none is free, so "a" asks the policy
    # for a victim and FCFS gives the latest admitted, "b".
    sched.update_from_output(out, ModelRunnerOutput(req_ids=["a", "b"],
                                                    sampled_token_ids=[[7], [7]],
                                                    logprobs=[None, None]))
    policy.contexts.clear()
    out = sched.schedule()
    assert [kind for kind, _ in policy.contexts] == ["choose_victim"]
    ctx = policy.contexts[0][1]
    assert (ctx.kv_cache_usage, ctx.num_free_blocks) == (1.0, 0)
    assert (ctx.num_running, ctx.num_waiting) == (2, 0)
    assert out.preempted_req_ids == {"b"}
    assert [r.request_id for r in sched.running] == ["a"]


def test_engine_constructs_the_policy_from_its_scheduler_config():
    from llmserve.engine.llm_engine import LLMEngine

    pm = fresh_plugin_manager()
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {
        "recording": RecordingPolicy}), "recorder")
    engine = LLMEngine(EngineArgs(scheduling_policy="recording", max_model_len=64,
                                  max_num_seqs=2, num_gpu_blocks_override=16),
                       plugin_manager=pm)
    policy = engine.core.scheduler.policy
    assert type(policy) is RecordingPolicy
    assert policy.config is engine.config.scheduler
    engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=2, temperature=0.0))
    while engine.has_unfinished_requests():
        engine.step()
    assert [kind for kind, _ in policy.contexts] == ["peek", "pop"]
    assert policy.contexts[0][1].config is engine.config.scheduler


# --------------------------------------------------------------------------------------------
# The plugin API: one list of modules, and the plugins here keep to it
# --------------------------------------------------------------------------------------------


def test_plugin_api_reexports_only_from_listed_modules():
    modules = {name: importlib.import_module(name) for name in plugin_api.PLUGIN_API_MODULES
               if name != "llmserve.plugin_api"}
    for name in plugin_api.__all__:
        obj = getattr(plugin_api, name)
        if name == "PLUGIN_API_MODULES":
            continue
        homes = [m for m, module in modules.items() if getattr(module, name, None) is obj]
        assert homes, f"plugin_api.{name} is not defined by any module of the plugin API"
    for name in ("Platform", "AttentionBackend", "AttentionMetadata", "ForwardContext",
                 "CacheSpec", "FullAttentionSpec", "SchedulingPolicy", "SchedulingContext",
                 "LogitsProcessor", "SamplingMetadata", "CliCommand", "CausalLM",
                 "ModelBuildContext", "hookimpl", "PLUGIN_API_VERSION", "LayerOps"):
        assert name in plugin_api.__all__


def test_api_page_lists_exactly_the_plugin_api_modules():
    text = (REPO / "docs" / "plugins" / "api.md").read_text()
    listed = re.findall(r"^- `(llmserve[\w.]*)`", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(plugin_api.PLUGIN_API_MODULES)
    assert "PLUGIN_API_VERSION" in text and "semantic" in text.lower()
    assert "plugin_api" in llmserve.__doc__ and "unstable" not in llmserve.__doc__.lower()


def _llmserve_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every absolute import of an llmserve* package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0].startswith("llmserve")]


def _declared_plugin_dependencies(root: Path) -> set[str]:
    """Import names of the llmserve-* plugin distributions ``root`` declares it depends on."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[\w.-]+", dep).group(0) for dep in project.get("dependencies", [])}
    return {name.replace("-", "_") for name in names if name.startswith("llmserve-")}


@pytest.mark.parametrize("package", sorted(PLUGIN_PACKAGES))
def test_plugin_packages_import_only_the_plugin_api(package):
    root = PLUGIN_PACKAGES[package]
    allowed_packages = {package} | _declared_plugin_dependencies(root)
    api = set(plugin_api.PLUGIN_API_MODULES)
    violations = []
    # The package and the scripts shipped beside it (benchmarks) keep to the plugin API.
    sources = sorted([*(root / package).rglob("*.py"), *root.glob("benchmarks/*.py")])
    assert sources
    for path in sources:
        for module, line in _llmserve_imports(path):
            top = module.split(".")[0]
            if top in allowed_packages or module in api:
                continue
            violations.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert violations == []


def test_import_scan_sees_a_violation(tmp_path):
    """The scan above would catch a plugin reaching into the core's internals."""
    source = tmp_path / "sneaky.py"
    source.write_text("from llmserve.engine.core import EngineCore\nimport llmserve.kv_cache\n"
                      "from llmserve import hookimpl\nfrom . import sibling\n")
    imports = _llmserve_imports(source)
    assert imports == [("llmserve.engine.core", 1), ("llmserve.kv_cache", 2), ("llmserve", 3)]
    api = set(plugin_api.PLUGIN_API_MODULES)
    assert [m for m, _ in imports if m not in api] == ["llmserve.engine.core", "llmserve.kv_cache"]
    assert _declared_plugin_dependencies(PLUGIN_PACKAGES["llmserve_nvidia"]) == {
        "llmserve_triton"}


def test_core_does_not_import_plugin_packages():
    core = REPO / "core" / "llmserve"
    offenders = [f"{path.relative_to(REPO)} imports {module}"
                 for path in core.rglob("*.py")
                 for module, _ in _llmserve_imports(path)
                 if module.split(".")[0] != "llmserve"]
    assert offenders == []
