"""Plugin discovery, registries, the ``llmserve`` CLI and the hook documentation.

The discovery tests pip-install two throwaway plugin distributions into a private virtual
environment (``plugin_dists``) and look at them from fresh interpreters.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
import types
from pathlib import Path

import pluggy
import pytest

from llmserve import hookspecs
from llmserve.cli.command import CliCommand
from llmserve.cli.main import build_parser, main
from llmserve.platforms.base import Platform
from llmserve.plugin_testing import (  # noqa: F401  (fixtures)
    add_plugin,
    fresh_plugin_manager,
    llmserve_pm,
    registered_plugin,
)
from llmserve.plugins import (
    PluginSource,
    collect_list,
    collect_registry,
    get_plugin_manager,
    hookimpl,
    plugin_infos,
    register_plugin,
)
from llmserve.scheduler.policy import FCFSPolicy
from plugin_dists import PluginEnv, make_plugin_env, write_dist

REPO = Path(__file__).resolve().parents[2]
HOOK_DOCS = REPO / "docs" / "plugins" / "hooks"

GOOD_DIST = "llmserve-testplugin-good"
BROKEN_DIST = "llmserve-testplugin-broken"

GOOD_PLUGIN = """\
from llmserve.plugins import hookimpl
from llmserve.scheduler.policy import FCFSPolicy

LLMSERVE_PLUGIN_API = ">=1.0,<2"


class ToyForCausalLM:
    # The CausalLM protocol's methods; the discovery tests never build the model.
    def __init__(self, cfg, ctx): ...
    @classmethod
    def build_context_flags(cls, cfg): return {}
    def forward(self, input_ids, positions, fctx): ...
    def compute_logits(self, hidden): ...
    def cache_specs(self, block_size): return []
    def load_weights(self, weights): return set()


class LifoPolicy(FCFSPolicy):
    name = "toy-lifo"


@hookimpl
def llmserve_model_architectures():
    return {"ToyForCausalLM": ToyForCausalLM}


@hookimpl
def llmserve_scheduling_policies():
    return {"toy-lifo": LifoPolicy}
"""

BROKEN_MODULES = {
    # Fails at import, as a plugin whose optional dependency is missing does.
    "broken": 'raise ImportError("llmserve-testplugin-broken needs the frobnicator library")\n',
    # A typo in a hook name: must be caught, not silently ignored.
    "misspelled": textwrap.dedent("""\
        from llmserve.plugins import hookimpl

        LLMSERVE_PLUGIN_API = ">=1.0"

        @hookimpl
        def llmserve_model_architecture():
            return {"Typo": object}
        """),
    # A parameter the hookspec does not have.
    "badsig": textwrap.dedent("""\
        from llmserve.plugins import hookimpl

        LLMSERVE_PLUGIN_API = ">=1.0"

        @hookimpl
        def llmserve_select_attention_backend(platform_name, device_count):
            return None
        """),
}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> PluginEnv:
    tmp = tmp_path_factory.mktemp("plugins")
    good = write_dist(tmp / "good", GOOD_DIST, "0.3.1", {"toy": GOOD_PLUGIN})
    broken = write_dist(tmp / "broken", BROKEN_DIST, "0.0.1", BROKEN_MODULES)
    env = make_plugin_env(tmp / "venv", [good, broken])
    yield env
    env.run(["-m", "pip", "uninstall", "--quiet", "-y", GOOD_DIST, BROKEN_DIST], check=False)


DISCOVER = """\
    import json
    from llmserve.plugins import collect_registry, get_plugin_manager
    pm = get_plugin_manager()
    only = get_plugin_manager(default_plugins=False)
    archs = collect_registry(only, "llmserve_model_architectures")
    print(json.dumps({
        "names": [name for name, _ in pm.list_name_plugin()],
        "skipped": pm.skipped,
        "archs": {k: f"{v.__module__}.{v.__qualname__}" for k, v in archs.items()},
        "policies": sorted(collect_registry(only, "llmserve_scheduling_policies")),
    }))
"""


# --------------------------------------------------------------------------------------------
# Discovery of installed plugins
# --------------------------------------------------------------------------------------------


#: The core's own plugins, always registered first.
CORE_PLUGINS = ["llmserve.default_plugins", "llmserve.http.plugin"]
#: Entry-point plugins of this test's packages (others, e.g. llmserve-nvidia, may be
#: installed in the environment too; assertions look only at these and the core's).
TEST_PLUGINS = {"toy", "broken", "misspelled", "badsig"}


def ours(names: list[str]) -> list[str]:
    return [n for n in names if n in CORE_PLUGINS or n in TEST_PLUGINS]


def test_installed_plugin_is_discovered(plugin_env):
    out, _ = plugin_env.run_script(DISCOVER)
    assert ours(out["names"]) == CORE_PLUGINS + ["toy"]
    # Installed model plugins (llmserve-ssm) contribute their own architectures too.
    archs = {k: v for k, v in out["archs"].items() if not v.startswith("llmserve_ssm.")}
    assert archs == {"ToyForCausalLM": "llmserve_testplugin_good.toy.ToyForCausalLM"}
    # Installed policy plugins (llmserve-schedulers) may contribute their own names too.
    assert [p for p in out["policies"] if p.startswith("toy")] == ["toy-lifo"]


def test_broken_plugins_are_skipped_with_a_warning(plugin_env):
    out, stderr = plugin_env.run_script(DISCOVER)
    # The good plugin still loads (asserted above too) while the broken ones are reported.
    assert "toy" in out["names"]
    assert set(out["skipped"]) == {"broken", "misspelled", "badsig"}

    assert re.search(r"plugin 'broken' was skipped: .*ImportError.*frobnicator", stderr)
    assert "ImportError" in out["skipped"]["broken"]


def test_misspelled_hook_skips_that_plugin(plugin_env):
    out, stderr = plugin_env.run_script(DISCOVER)
    assert "misspelled" not in out["names"]
    assert "Typo" not in out["archs"]
    warning = next(line for line in stderr.splitlines() if "'misspelled'" in line)
    assert "unknown hook 'llmserve_model_architecture'" in warning
    assert "did you mean 'llmserve_model_architectures'" in warning
    # A parameter the spec lacks is a validation error too.
    assert "device_count" in out["skipped"]["badsig"]


@pytest.mark.parametrize("value, expected", [
    ("toy", ["toy"]),
    (" toy , broken", ["toy"]),
    ("", []),
    ("misspelled", []),
])
def test_llmserve_plugins_limits_loading(plugin_env, value, expected):
    out, stderr = plugin_env.run_script(DISCOVER, plugins=value)
    # LLMSERVE_PLUGINS limits third-party plugins only: nothing else installed loads.
    assert out["names"] == CORE_PLUGINS + expected
    # Plugins left out are not even imported, so they cannot warn.
    requested = {part.strip() for part in value.split(",") if part.strip()}
    assert set(out["skipped"]) == requested & {"broken", "misspelled", "badsig"}
    if "broken" not in requested:
        assert "frobnicator" not in stderr


def test_llmserve_plugins_warns_about_unknown_names(plugin_env):
    out, stderr = plugin_env.run_script(DISCOVER, plugins="toy,nosuchplugin")
    assert out["names"] == CORE_PLUGINS + ["toy"]
    assert "nosuchplugin" in stderr and "not installed" in stderr


# --------------------------------------------------------------------------------------------
# The `llmserve plugins` command
# --------------------------------------------------------------------------------------------


def test_plugins_command_lists_version_and_contributions(plugin_env):
    proc = plugin_env.run(["-m", "llmserve.cli.main", "plugins"])
    lines = proc.stdout.splitlines()
    start = lines.index(f"toy 0.3.1 ({GOOD_DIST}), plugin API >=1.0,<2")
    block = lines[start + 1:start + 3]
    assert block == ["  model_architectures: ToyForCausalLM",
                     "  scheduling_policies: toy-lifo"]
    assert lines[0] == "llmserve.default_plugins builtin"
    skipped = lines[lines.index("skipped:") + 1:]
    assert {line.split(":")[0].strip() for line in skipped} == {"badsig", "broken", "misspelled"}


def test_plugins_command_json(plugin_env):
    proc = plugin_env.run(["-m", "llmserve.cli.main", "plugins", "--json"], plugins="toy")
    data = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert list(by_name) == CORE_PLUGINS + ["toy"]
    toy = by_name["toy"]
    assert toy["version"] == "0.3.1"
    assert toy["distribution"] == GOOD_DIST
    assert toy["hooks"] == ["llmserve_model_architectures", "llmserve_scheduling_policies"]
    assert toy["provides"] == {"llmserve_model_architectures": ["ToyForCausalLM"],
                               "llmserve_scheduling_policies": ["toy-lifo"]}
    assert toy["errors"] == {}
    assert toy["plugin_api"] == ">=1.0,<2"
    default = by_name["llmserve.default_plugins"]
    assert default["version"] == "builtin"
    assert "plugins" in default["provides"]["llmserve_cli_commands"]
    assert data["skipped"] == {}


def test_trace_hooks_env_writes_hook_calls_to_stderr(plugin_env):
    _, stderr = plugin_env.run_script(DISCOVER, plugins="toy", trace=True)
    assert "llmserve_model_architectures [toy]" in stderr
    assert "ToyForCausalLM" in stderr
    _, quiet = plugin_env.run_script(DISCOVER, plugins="toy")
    assert "llmserve_model_architectures" not in quiet


def test_cli_version_and_missing_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "llmserve 0.1.0"
    assert main([]) == 2
    assert "usage: llmserve" in capsys.readouterr().err


class Hello(CliCommand):
    name = "hello"
    help = "Say hello."

    def add_arguments(self, parser):
        parser.add_argument("--who", default="world")

    def run(self, args):
        print(f"hello {args.who}")
        return 3


def test_plugin_contributes_cli_command(add_plugin, llmserve_pm, capsys):
    add_plugin(_plugin(llmserve_cli_commands=lambda: [Hello()]), "hello-plugin")
    parser = build_parser(llmserve_pm)
    args = parser.parse_args(["hello", "--who", "tests"])
    assert args._command.run(args) == 3
    assert capsys.readouterr().out == "hello tests\n"
    names = [c.name for c in collect_list(llmserve_pm, "llmserve_cli_commands",
                                           key=lambda c: c.name)]
    # The core's commands come first, a plugin's after them.
    assert names[0] == "plugins" and names[-1] == "hello"


# --------------------------------------------------------------------------------------------
# Registries and registration (in-process, plugins registered by hand)
# --------------------------------------------------------------------------------------------


def _plugin(**hooks) -> object:
    """A plugin object whose attributes are the given functions, marked as hookimpls.

    (Not a SimpleNamespace: those compare equal by content, and pluggy would take two
    plugins with the same function for one.)
    """
    return type("TestPlugin", (), {
        name: staticmethod(fn if hasattr(fn, "llmserve_impl") else hookimpl(fn))
        for name, fn in hooks.items()})()


# Registry entries must be of their hook's type (llmserve.plugins.ENTRY_TYPES): policies
# here, platforms in the list tests.
class A(FCFSPolicy): ...
class B(FCFSPolicy): ...
class C(FCFSPolicy): ...
class PlatformA(Platform): ...
class PlatformB(Platform): ...
class PlatformC(Platform): ...


POLICIES = "llmserve_scheduling_policies"


def test_collect_registry_merges_in_registration_order():
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"a": A}), "one")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: None), "silent")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"b": B, "c": C}), "two")
    assert list(collect_registry(pm, POLICIES).items()) == [("a", A), ("b", B), ("c", C)]


@pytest.mark.parametrize("default_first", [True, False])
def test_collect_registry_non_default_plugin_beats_default(caplog, default_first):
    pm = fresh_plugin_manager(default_plugins=False)
    default = (_plugin(llmserve_scheduling_policies=lambda: {"fcfs": A, "prio": C}), "core",
               PluginSource(is_default=True))
    third = (_plugin(llmserve_scheduling_policies=lambda: {"fcfs": B}), "third", None)
    for plugin, name, source in ([default, third] if default_first else [third, default]):
        register_plugin(pm, plugin, name, source)
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        registry = collect_registry(pm, POLICIES)
    assert registry == {"fcfs": B, "prio": C}
    [record] = caplog.records
    assert "'fcfs'" in record.message and "'core'" in record.message
    assert record.message.endswith("using the one from 'third'")


def test_collect_registry_between_plugins_call_order_wins(caplog):
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"x": A}), "early")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"x": B}), "late")
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        assert collect_registry(pm, POLICIES) == {"x": B}  # registered last, called first
    assert len(caplog.records) == 1

    pm = fresh_plugin_manager(default_plugins=False)
    first = hookimpl(tryfirst=True)(lambda: {"x": A})
    register_plugin(pm, _plugin(llmserve_scheduling_policies=first), "early")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"x": B}), "late")
    assert collect_registry(pm, POLICIES) == {"x": A}


def test_collect_registry_same_object_twice_is_no_conflict(caplog):
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"x": A}), "one")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"x": A}), "two")
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        assert collect_registry(pm, POLICIES) == {"x": A}
    assert caplog.records == []


def _raise():
    raise RuntimeError("no GPU here")


def test_collect_registry_isolates_failing_third_party_hooks(caplog):
    pm = fresh_plugin_manager(default_plugins=False)
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"a": A}), "good")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=_raise), "raises")
    register_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: ["not", "a", "dict"]),
                    "wrongtype")
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        assert collect_registry(pm, POLICIES) == {"a": A}
    text = caplog.text
    assert "'raises'" in text and "RuntimeError: no GPU here" in text
    assert "'wrongtype'" in text and "expected a dict" in text

    # A broken default is a bug in llmserve itself: it must not be hidden.
    register_plugin(pm, _plugin(llmserve_scheduling_policies=_raise), "core",
                    PluginSource(is_default=True))
    with pytest.raises(RuntimeError, match="no GPU here"):
        collect_registry(pm, POLICIES)


def test_collect_list_order_and_key_dedup(caplog):
    pm = fresh_plugin_manager(default_plugins=False)
    first, second = Hello(), Hello()
    register_plugin(pm, _plugin(llmserve_cli_commands=lambda: [first]), "core",
                    PluginSource(is_default=True))
    register_plugin(pm, _plugin(llmserve_cli_commands=lambda: [second]), "p1")
    register_plugin(pm, _plugin(llmserve_platforms=lambda: [PlatformA, PlatformB]), "p2")
    register_plugin(pm, _plugin(llmserve_platforms=lambda: [PlatformC]), "p3")
    assert collect_list(pm, "llmserve_platforms") == [PlatformA, PlatformB, PlatformC]
    assert collect_list(pm, "llmserve_cli_commands") == [first, second]
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        assert collect_list(pm, "llmserve_cli_commands", key=lambda c: c.name) == [second]
    assert "'hello'" in caplog.text


def test_collect_registry_rejects_unknown_hooks_and_missing_arguments():
    pm = fresh_plugin_manager(default_plugins=False)
    with pytest.raises(ValueError, match="unknown hook"):
        collect_registry(pm, "llmserve_nothing")
    with pytest.raises(TypeError, match="engine_client"):
        collect_list(pm, "llmserve_http_routes", {"app": None, "config": None})


def test_register_plugin_rejects_misspelled_hook_and_leaves_nothing_behind():
    pm = fresh_plugin_manager(default_plugins=False)
    bad = _plugin(llmserve_platform=lambda: [A])
    with pytest.raises(pluggy.PluginValidationError, match="did you mean 'llmserve_platforms'"):
        register_plugin(pm, bad, "bad")
    assert not pm.has_plugin("bad")
    pm.check_pending()  # nothing half-registered remains


def test_undecorated_hook_function_warns(caplog):
    pm = fresh_plugin_manager(default_plugins=False)
    plugin = types.SimpleNamespace(llmserve_platforms=lambda: [A])
    with caplog.at_level(logging.WARNING, logger="llmserve.plugins"):
        register_plugin(pm, plugin, "forgetful")
    assert "llmserve_platforms() without @hookimpl" in caplog.text
    assert collect_list(pm, "llmserve_platforms") == []


def test_registered_plugin_context_is_scoped():
    pm = fresh_plugin_manager(default_plugins=False)
    with registered_plugin(pm, _plugin(llmserve_scheduling_policies=lambda: {"a": A}), "tmp"):
        assert collect_registry(pm, POLICIES) == {"a": A}
    assert collect_registry(pm, POLICIES) == {}
    assert not pm.has_plugin("tmp")


def test_select_attention_backend_is_first_result(add_plugin, llmserve_pm):
    add_plugin(_plugin(llmserve_select_attention_backend=lambda platform_name: None), "pass")
    add_plugin(_plugin(llmserve_select_attention_backend=lambda platform_name, model_arch:
                       "fast" if platform_name == "cuda" else None), "picker")
    hook = llmserve_pm.hook.llmserve_select_attention_backend
    assert hook(platform_name="cuda", model_arch="LlamaForCausalLM") == "fast"
    assert hook(platform_name="cpu", model_arch="LlamaForCausalLM") is None


def test_plugin_infos_reports_provides_and_errors(llmserve_pm, add_plugin):
    add_plugin(_plugin(llmserve_platforms=lambda: [types.SimpleNamespace(name="fake")],
                       llmserve_scheduling_policies=_raise,
                       llmserve_engine_started=lambda config: None), "mixed")
    info = {i.name: i for i in plugin_infos(llmserve_pm)}["mixed"]
    assert info.version is None and info.distribution is None
    assert info.hooks == ["llmserve_engine_started", "llmserve_platforms",
                          "llmserve_scheduling_policies"]
    assert info.provides == {"llmserve_platforms": ["fake"]}
    assert info.errors == {"llmserve_scheduling_policies": "RuntimeError: no GPU here"}


def test_default_plugins_implement_the_core_hooks():
    pm = get_plugin_manager(load_entry_points=False)
    plugin = pm.get_plugin("llmserve.default_plugins")
    assert pm.is_default_plugin("llmserve.default_plugins")
    implemented = {caller.name for caller in pm.get_hookcallers(plugin)}
    assert implemented == {
        "llmserve_platforms", "llmserve_model_architectures", "llmserve_attention_backends",
        "llmserve_scheduling_policies", "llmserve_logits_processors", "llmserve_cache_specs",
        "llmserve_cli_commands", "llmserve_structured_output_backends", "llmserve_tool_parsers",
        "llmserve_speculative_proposers",
    }


def test_each_call_builds_a_fresh_manager():
    first, second = get_plugin_manager(False), get_plugin_manager(False)
    assert first is not second
    register_plugin(first, _plugin(llmserve_platforms=lambda: [A]), "only-in-first")
    assert not second.has_plugin("only-in-first")


# --------------------------------------------------------------------------------------------
# The contract and its documentation
# --------------------------------------------------------------------------------------------


def _hookspec_names() -> list[str]:
    return [name for name, obj in vars(hookspecs).items()
            if name.startswith("llmserve_") and hasattr(obj, "llmserve_spec")]


def test_hookspec_catalogue():
    assert set(_hookspec_names()) == {
        "llmserve_platforms", "llmserve_model_architectures", "llmserve_attention_backends",
        "llmserve_scheduling_policies", "llmserve_logits_processors", "llmserve_cache_specs",
        "llmserve_cli_commands", "llmserve_structured_output_backends", "llmserve_tool_parsers",
        "llmserve_speculative_proposers", "llmserve_http_routes", "llmserve_select_attention_backend", "llmserve_engine_started",
    }
    pm = get_plugin_manager(load_entry_points=False, default_plugins=False)
    firstresult = {name for name in _hookspec_names()
                   if getattr(pm.hook, name).spec.opts["firstresult"]}
    historic = {name for name in _hookspec_names()
                if getattr(pm.hook, name).spec.opts["historic"]}
    assert firstresult == {"llmserve_select_attention_backend"}
    assert historic == set()
    assert getattr(pm.hook, "llmserve_http_routes").spec.argnames == (
        "app", "engine_client", "config")


@pytest.mark.parametrize("name", _hookspec_names())
def test_hook_is_documented(name):
    doc = getattr(hookspecs, name).__doc__
    assert doc and doc.strip(), f"hookspec {name} has no docstring"
    assert "Added in " in doc, f"hookspec {name} does not say which version added it"
    page = HOOK_DOCS / f"{name}.md"
    assert page.is_file(), f"hook {name} has no documentation page {page.relative_to(REPO)}"
    text = page.read_text()
    assert name in text and "```python" in text, f"{page.name} lacks the signature or example"
    index = (REPO / "docs" / "plugins" / "index.md").read_text()
    assert f"hooks/{name}.md" in index, f"docs/plugins/index.md does not link {name}"


def test_no_documentation_for_missing_hooks():
    pages = {page.stem for page in HOOK_DOCS.glob("*.md")}
    assert pages - set(_hookspec_names()) == set()
