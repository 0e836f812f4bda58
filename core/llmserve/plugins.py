"""Plugin discovery, and the registries the core builds from hook results.

``get_plugin_manager()`` builds a fresh pluggy manager on every call (there is no module-level
singleton, so each test and each process gets its own): it adds ``llmserve.hookspecs``,
registers the core's defaults (``DEFAULT_PLUGINS``) and then the third-party plugins found as
entry points of the group ``llmserve``.

Third-party plugins are isolated from each other: one that fails to import, implements a hook
that does not exist (a misspelling), does not match a hook's signature, or declares a range of
plugin API versions (``LLMSERVE_PLUGIN_API``) that excludes this llmserve's
``PLUGIN_API_VERSION`` is logged with a warning and skipped; the rest still load. A registry
entry of the wrong type (``ENTRY_TYPES``) is skipped alone, the plugin's other entries still
count. The core's own defaults get no such leniency — a broken default is a bug in llmserve and
raises.

Environment:

- ``LLMSERVE_PLUGINS=a,b`` loads only the entry points named ``a`` and ``b``; an empty value
  loads none. Unset, every installed plugin loads. The core's defaults always load.
- ``LLMSERVE_TRACE_HOOKS=1`` writes every hook call, its arguments and its result to stderr.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from llmserve import hookspecs
from llmserve.plugin_markers import (  # noqa: F401 (hookimpl and hookspec are re-exported)
    PLUGIN_API_ATTRIBUTE,
    PLUGIN_API_VERSION,
    PROJECT_NAME,
    hookimpl,
    hookspec,
)

#: Entry-point group plugins are discovered from; each entry point names a module.
ENTRY_POINT_GROUP = "llmserve"
PLUGINS_ENV = "LLMSERVE_PLUGINS"
TRACE_ENV = "LLMSERVE_TRACE_HOOKS"

#: Modules registered as the core's defaults, in this order, before any entry point. Each is
#: registered under its module name and reported as version "builtin".
DEFAULT_PLUGINS: tuple[str, ...] = ("llmserve.default_plugins", "llmserve.http.plugin")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntryType:
    """What every entry of a contribute hook's result must be.

    ``base`` is written ``"module:Class"`` and imported only when a registry is built, so that
    importing this module (every ``llmserve`` command does) pulls in neither torch nor the
    engine. Entries are subclasses of ``base``, or with ``instances`` instances of it; a
    ``typing.Protocol`` base is checked structurally: the class must have each of its methods.
    """

    base: str
    instances: bool = False

    def resolve(self) -> type:
        module_name, _, name = self.base.partition(":")
        return getattr(importlib.import_module(module_name), name)


#: Contribute hook -> what each entry it returns must be; ``collect_registry`` and
#: ``collect_list`` check every entry against it. The one place the hooks' return types are
#: enforced (``llmserve.hookspecs`` states them for readers and type checkers).
ENTRY_TYPES: dict[str, EntryType] = {
    "llmserve_platforms": EntryType("llmserve.platforms.base:Platform"),
    "llmserve_attention_backends": EntryType("llmserve.attention.backend:AttentionBackend"),
    "llmserve_model_architectures": EntryType("llmserve.models.interface:CausalLM"),
    "llmserve_cache_specs": EntryType("llmserve.kv_cache.spec:CacheSpec"),
    "llmserve_scheduling_policies": EntryType("llmserve.scheduler.policy:SchedulingPolicy"),
    "llmserve_logits_processors": EntryType("llmserve.sample.logits_processor:LogitsProcessor"),
    "llmserve_structured_output_backends": EntryType(
        "llmserve.structured_output.backend:StructuredOutputBackend"),
    "llmserve_cli_commands": EntryType("llmserve.cli.command:CliCommand", instances=True),
    "llmserve_tool_parsers": EntryType("llmserve.tool_parsers.base:ToolParser"),
    "llmserve_speculative_proposers": EntryType("llmserve.spec_decode.proposer:Proposer"),
}


@dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from."""

    is_default: bool
    #: Distribution that declared the entry point (``"llmserve-nvidia"``); None otherwise.
    distribution: str | None = None
    version: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus the origin of each plugin and the plugins that were skipped.

    Both exist for ``llmserve plugins`` and for the merge rule of ``collect_registry``
    (a non-default plugin beats a default).
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        #: Plugin name → where it came from. Plugins registered by hand have no entry.
        self.sources: dict[str, PluginSource] = {}
        #: Plugin name → why it was not loaded.
        self.skipped: dict[str, str] = {}

    def is_default_plugin(self, name: str) -> bool:
        source = self.sources.get(name)
        return source is not None and source.is_default


def get_plugin_manager(load_entry_points: bool = True,
                       default_plugins: bool = True) -> PluginManager:
    """Build a fresh plugin manager.

    :param load_entry_points: load third-party plugins from the ``llmserve`` entry-point group
        (filtered by ``LLMSERVE_PLUGINS``). Unit tests pass False and register test plugins
        directly (see ``llmserve.plugin_testing``).
    :param default_plugins: register the core's defaults (``DEFAULT_PLUGINS``).
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if _env_flag(TRACE_ENV):
        # Look sys.stderr up per write so redirections made later (pytest's capture) apply.
        pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
        pm.enable_tracing()
    if default_plugins:
        for module_name in DEFAULT_PLUGINS:
            register_plugin(pm, importlib.import_module(module_name), module_name,
                            PluginSource(is_default=True))
    if load_entry_points:
        _load_entry_point_plugins(pm)
    pm.check_pending()
    return pm


def register_plugin(pm: PluginManager, plugin: object, name: str | None = None,
                    source: PluginSource | None = None) -> str:
    """Register ``plugin`` and validate it; on any error nothing stays registered.

    Raises ``pluggy.PluginValidationError`` for an unknown (misspelled) hook or a signature
    that does not match its spec, ``ValueError`` for a name or plugin registered twice.
    Returns the name the plugin is registered under.
    """
    if name is not None and pm.is_blocked(name):
        raise ValueError(f"plugin name {name!r} is blocked")
    if name is not None and pm.has_plugin(name):
        raise ValueError(f"a plugin named {name!r} is already registered")
    if pm.is_registered(plugin):
        raise ValueError(f"{plugin!r} is already registered as {pm.get_name(plugin)!r}")
    registered = name or pm.get_canonical_name(plugin)
    try:
        pm.register(plugin, name=registered)
        _check_hook_names(pm, plugin, registered)
    except Exception:
        # pluggy may fail half-way through register(); leave nothing of the plugin behind.
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise
    if source is not None:
        pm.sources[registered] = source
    _warn_undecorated(pm, plugin, registered)
    return registered


def _check_hook_names(pm: PluginManager, plugin: object, name: str) -> None:
    """``check_pending`` for one plugin, with a suggestion for a misspelled hook name."""
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        if all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin):
            continue
        known = [hook for hook in vars(pm.hook) if getattr(pm.hook, hook).has_spec()]
        close = difflib.get_close_matches(caller.name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise pluggy.PluginValidationError(
            plugin, f"plugin {name!r} implements unknown hook {caller.name!r}{hint}")


def _load_entry_point_plugins(pm: PluginManager) -> None:
    entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                          key=lambda ep: ep.name)
    allowed = _allowed_plugin_names()
    if allowed:
        missing = allowed - {ep.name for ep in entry_points}
        if missing:
            logger.warning("%s names plugins that are not installed: %s (installed: %s)",
                           PLUGINS_ENV, ", ".join(sorted(missing)),
                           ", ".join(ep.name for ep in entry_points) or "none")
    for ep in entry_points:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must never take the engine down
            _skip(pm, ep.name, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            continue
        if not _supports_running_api(pm, ep.name, plugin):
            continue
        dist = ep.dist
        source = PluginSource(is_default=False,
                              distribution=dist.name if dist is not None else None,
                              version=dist.version if dist is not None else None)
        try:
            register_plugin(pm, plugin, ep.name, source)
        except (pluggy.PluginValidationError, ValueError) as exc:
            _skip(pm, ep.name, f"{type(exc).__name__}: {exc}")


def _supports_running_api(pm: PluginManager, name: str, plugin: object) -> bool:
    """Check the plugin's ``LLMSERVE_PLUGIN_API`` range against ``PLUGIN_API_VERSION``.

    A plugin outside its declared range is skipped; one that declares nothing loads, with a
    warning, since it was written before the plugin API was versioned or ignores it.
    """
    declared = getattr(plugin, PLUGIN_API_ATTRIBUTE, None)
    if declared is None:
        logger.warning("llmserve plugin %r declares no %s (e.g. %s = \">=1.0,<2\"); loading "
                       "it with plugin API %s", name, PLUGIN_API_ATTRIBUTE,
                       PLUGIN_API_ATTRIBUTE, PLUGIN_API_VERSION)
        return True
    supported = _version_range(declared)
    if supported is None:
        _skip(pm, name, f"{PLUGIN_API_ATTRIBUTE} = {declared!r} is not a version range "
                        f"such as '>=1.0,<2'")
        return False
    if PLUGIN_API_VERSION not in supported:
        _skip(pm, name, f"it supports plugin API {declared!r} and this llmserve provides "
                        f"plugin API {PLUGIN_API_VERSION}")
        return False
    return True


def _version_range(declared: object) -> SpecifierSet | None:
    if not isinstance(declared, str) or not declared.strip():
        return None
    try:
        return SpecifierSet(declared)
    except InvalidSpecifier:
        return None


def _skip(pm: PluginManager, name: str, reason: str) -> None:
    reason = "; ".join(line.strip() for line in reason.splitlines() if line.strip())
    pm.skipped[name] = reason
    logger.warning("llmserve plugin %r was skipped: %s", name, reason)


def _allowed_plugin_names() -> set[str] | None:
    value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _warn_undecorated(pm: PluginManager, plugin: object, name: str) -> None:
    """pluggy ignores functions without ``@hookimpl``; say so instead of failing silently."""
    for attr in dir(plugin):
        if not attr.startswith(PROJECT_NAME + "_"):
            continue
        if callable(getattr(plugin, attr, None)) and pm.parse_hookimpl_opts(plugin, attr) is None:
            logger.warning("llmserve plugin %r defines %s() without @hookimpl; it is ignored",
                           name, attr)


# --------------------------------------------------------------------------------------------
# Registries: merging what contribute hooks return
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contribution:
    plugin_name: str
    is_default: bool
    value: Any


def _contributions(pm: PluginManager, hook_name: str,
                   hook_kwargs: Mapping[str, Any] | None) -> list[_Contribution]:
    """Each implementation's non-None result, in pluggy's call order (precedence order).

    Implementations are called one at a time so every entry can be attributed to its plugin;
    hook wrappers therefore do not apply here. A third-party implementation that raises is
    logged and skipped; a default one raises.
    """
    hook = getattr(pm.hook, hook_name, None)
    if hook is None or not hook.has_spec():
        raise ValueError(f"unknown hook {hook_name!r}")
    hook_kwargs = dict(hook_kwargs or {})
    missing = [arg for arg in hook.spec.argnames if arg not in hook_kwargs]
    if missing:
        raise TypeError(f"{hook_name} needs arguments {missing}")
    hooktrace = pm.trace.root.get("hook")
    results = []
    for impl in reversed(hook.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            continue
        is_default = pm.is_default_plugin(impl.plugin_name)
        hooktrace(hook_name, f"[{impl.plugin_name}]", hook_kwargs)
        try:
            value = impl.function(*(hook_kwargs[arg] for arg in impl.argnames))
        except Exception as exc:
            if is_default:
                raise
            logger.warning("llmserve plugin %r: %s raised %s: %s; its entries are skipped",
                           impl.plugin_name, hook_name, type(exc).__name__, exc)
            continue
        hooktrace("finish", hook_name, f"[{impl.plugin_name}]", "-->", value)
        if value is not None:
            results.append(_Contribution(impl.plugin_name, is_default, value))
    return results


_Entry = tuple[Any, _Contribution]


def _resolve(hook_name: str,
             entries: Iterable[tuple[str, Any, _Contribution]]) -> dict[str, _Entry]:
    """Pick one value per name. ``entries`` come in precedence order.

    The first entry for a name wins, except that a non-default plugin beats a default one;
    a name given twice with different values is logged.
    """
    chosen: dict[str, _Entry] = {}
    for name, value, contribution in entries:
        previous = chosen.get(name)
        if previous is None:
            chosen[name] = (value, contribution)
            continue
        if previous[0] is value:
            continue
        winner = previous
        if previous[1].is_default and not contribution.is_default:
            winner = (value, contribution)
        logger.warning("%s: %r is contributed by plugins %r and %r; using the one from %r",
                       hook_name, name, previous[1].plugin_name, contribution.plugin_name,
                       winner[1].plugin_name)
        chosen[name] = winner
    return chosen


def _reject(contribution: _Contribution, message: str, skipped: str) -> bool:
    """A bad contribution: the core's defaults raise ``TypeError``, a third-party plugin's is
    logged and left out. Returns False (not valid)."""
    message = f"llmserve plugin {contribution.plugin_name!r}: {message}"
    if contribution.is_default:
        raise TypeError(message)
    logger.warning("%s; %s", message, skipped)
    return False


def _checked(contribution: _Contribution, hook_name: str, kind: type, kind_name: str) -> bool:
    if isinstance(contribution.value, kind):
        return True
    return _reject(contribution, f"{hook_name} returned {type(contribution.value).__name__}, "
                                 f"expected a {kind_name}", "its entries are skipped")


def _is_valid_entry(contribution: _Contribution, hook_name: str, label: str, value: Any,
                    base: type, instances: bool) -> bool:
    """Check one entry: a wrong one from a third-party plugin is logged and left out, one
    from the core's defaults raises ``TypeError``."""
    problem = _entry_problem(value, base, instances)
    if problem is None:
        return True
    return _reject(contribution, f"{hook_name} entry {label!r} {problem}", "the entry is skipped")


def _entry_problem(value: Any, base: type, instances: bool) -> str | None:
    """Why ``value`` is not an entry of type ``base``, or None when it is one."""
    expected = f"{base.__module__}.{base.__qualname__}"
    if instances:
        if isinstance(value, base):
            return None
        return f"is {_describe(value)}, expected an instance of {expected}"
    if not isinstance(value, type):
        return f"is {_describe(value)}, not a class; expected a subclass of {expected}"
    if Protocol in base.__bases__:
        missing = [name for name in _protocol_methods(base)
                   if not callable(getattr(value, name, None))]
        if not missing:
            return None
        return (f"is {_describe(value)}, which lacks {', '.join(missing)}; expected a class "
                f"implementing {expected}")
    if issubclass(value, base):
        return None
    return f"is {_describe(value)}, expected a subclass of {expected}"


def _protocol_methods(protocol: type) -> list[str]:
    """The public methods a ``typing.Protocol`` declares (``__init__`` is not checkable)."""
    return [name for name in vars(protocol)
            if not name.startswith("_") and callable(getattr(protocol, name))]


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__module__}.{type(value).__qualname__} ({value!r})"


def _valid_entries(contribution: _Contribution, hook_name: str) -> _Contribution:
    """The contribution with its entries that are not of the hook's ``ENTRY_TYPES`` left out."""
    entry_type = ENTRY_TYPES.get(hook_name)
    if entry_type is None:
        return contribution
    base, instances = entry_type.resolve(), entry_type.instances
    value = contribution.value
    if isinstance(value, Mapping):
        kept: Any = {name: entry for name, entry in value.items()
                     if _is_valid_entry(contribution, hook_name, str(name), entry, base,
                                        instances)}
    else:
        kept = [item for item in value
                if _is_valid_entry(contribution, hook_name, _entry_name(item), item, base,
                                   instances)]
    return _Contribution(contribution.plugin_name, contribution.is_default, kept)


def collect_registry(pm: PluginManager, hook_name: str,
                     hook_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge the ``{name: value}`` dicts a contribute hook returns into one registry.

    A name contributed by two plugins logs a warning and is resolved as follows: a
    non-default plugin beats the core's defaults (so a plugin can replace a built-in on
    purpose); between two plugins of the same kind, the one pluggy calls first wins
    (``tryfirst`` implementations, else the plugin registered last — entry points register in
    name order). The same object under the same name from two plugins is not a conflict.
    Entries keep registration order (defaults first). Every entry is checked against the
    hook's ``ENTRY_TYPES`` line before names are resolved, so a wrong entry never shadows a
    right one.
    """
    contributions = [_valid_entries(c, hook_name)
                     for c in _contributions(pm, hook_name, hook_kwargs)
                     if _checked(c, hook_name, Mapping, "dict")]
    chosen = _resolve(hook_name, ((name, value, c)
                                  for c in contributions for name, value in c.value.items()))
    registry: dict[str, Any] = {}
    for contribution in reversed(contributions):
        for name in contribution.value:
            value, owner = chosen[name]
            if owner is contribution:
                registry.setdefault(name, value)
    return registry


def collect_list(pm: PluginManager, hook_name: str,
                 hook_kwargs: Mapping[str, Any] | None = None,
                 key: Callable[[Any], str] | None = None) -> list[Any]:
    """Concatenate the lists a contribute hook returns, in registration order (defaults first).

    With ``key``, items are names (``key(item)``) and duplicates are resolved like
    ``collect_registry`` names. Items are checked against ``ENTRY_TYPES`` like registry
    entries.
    """
    contributions = [_valid_entries(c, hook_name)
                     for c in _contributions(pm, hook_name, hook_kwargs)
                     if _checked(c, hook_name, (list, tuple), "list")]
    if key is None:
        return [item for c in reversed(contributions) for item in c.value]
    chosen = _resolve(hook_name, ((key(item), item, c)
                                  for c in contributions for item in c.value))
    items: list[Any] = []
    for contribution in reversed(contributions):
        for item in contribution.value:
            value, owner = chosen[key(item)]
            if owner is contribution and value is item and item not in items:
                items.append(item)
    return items


# --------------------------------------------------------------------------------------------
# Introspection (``llmserve plugins``)
# --------------------------------------------------------------------------------------------


@dataclass
class PluginInfo:
    """What ``llmserve plugins`` reports about one registered plugin."""

    name: str
    #: Version of the distribution that declared the entry point; "builtin" for the core's
    #: defaults; the module's ``__version__`` or None for plugins registered by hand.
    version: str | None
    #: Names of the hooks the plugin implements.
    hooks: list[str]
    #: For contribute hooks without parameters: hook name → names of what it contributes.
    provides: dict[str, list[str]]
    distribution: str | None = None
    #: The range of plugin API versions the plugin declares (``LLMSERVE_PLUGIN_API``); None
    #: when it declares none, and for the core's defaults, which are the running version.
    plugin_api: str | None = None
    #: Hook name → error raised while asking the plugin what it provides.
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plugin_infos(pm: PluginManager) -> list[PluginInfo]:
    """Describe every registered plugin, in registration order (defaults first).

    Parameterless contribute hooks are called (one plugin at a time) to list what they
    provide; an implementation that raises is reported in ``errors``, not raised.
    """
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        source = pm.sources.get(name)
        if source is not None and source.is_default:
            version: str | None = "builtin"
        elif source is not None and source.version is not None:
            version = source.version
        else:
            version = getattr(plugin, "__version__", None)
        declared = getattr(plugin, PLUGIN_API_ATTRIBUTE, None)
        info = PluginInfo(name=name, version=version, hooks=[], provides={},
                          distribution=source.distribution if source else None,
                          plugin_api=str(declared) if declared is not None else None)
        for caller in sorted(pm.get_hookcallers(plugin) or [], key=lambda c: c.name):
            info.hooks.append(caller.name)
            spec = caller.spec
            if spec is None or spec.argnames or spec.opts.get("firstresult"):
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or impl.wrapper or impl.hookwrapper:
                    continue
                try:
                    value = impl.function()
                except Exception as exc:
                    info.errors[caller.name] = f"{type(exc).__name__}: {exc}"
                    continue
                info.provides[caller.name] = _entry_names(value)
        infos.append(info)
    return infos


def _entry_names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [str(name) for name in value]
    return [_entry_name(item) for item in value]


def _entry_name(item: Any) -> str:
    """What a list entry is called: its ``name``, else its ``__name__``, else its repr."""
    name = getattr(item, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(item, "__name__", repr(item))
