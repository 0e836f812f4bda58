"""Hook specifications: the public contract between llmserve and its plugins.

Every function here is a pluggy hook specification of the project ``llmserve``; a plugin
implements one by defining a function of the same name decorated with
``llmserve.hookimpl``. The bodies are empty on purpose: this module is a catalogue,
and each docstring is the reference an implementer works from (docs/plugins/hooks/ has a page
per hook with an example).

Two kinds of hooks:

- **contribute** hooks return entries that the core merges from every plugin (architectures,
  policies, routes). The core's own defaults arrive through the same hooks
  (``llmserve.default_plugins``), so nothing built-in is privileged. When two plugins contribute
  the same name, a warning is logged and a non-default plugin beats the core's default; between
  two third-party plugins the one pluggy calls first wins (``tryfirst``, else the one registered
  last). See ``llmserve.plugins.collect_registry``.
- **pick one** hooks are ``firstresult``: the first implementation returning something other
  than ``None`` decides, and ``None`` means "no opinion, ask the next plugin".

Rules every hook follows: it receives the smallest objects it needs (a frozen config, a name),
never the engine; it returns values and never edits shared state in place; implementations may
accept a subset of the parameters, so new parameters can be added without breaking plugins.

Plugin managers are built per process (``llmserve.plugins.get_plugin_manager``): when serving,
the HTTP front end, the engine core and each worker build their own from the installed entry
points. A plugin registered by hand in one process is therefore not seen in the others; ship
it as an entry point in the group ``llmserve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmserve.plugin_markers import hookspec

if TYPE_CHECKING:
    from llmserve.cli.command import CliCommand
    from llmserve.config import EngineConfig
    from llmserve.platforms.base import Platform


# --------------------------------------------------------------------------------------------
# Platform and kernels
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_platforms() -> list[type[Platform]]:
    """Contribute hardware platforms.

    **Kind:** contribute (the core concatenates the lists of all plugins).

    **When / where:** called when an engine is created, in the process that chooses the device
    (the caller's process for the offline ``LLM``, the engine-core process when serving), and by
    ``llmserve plugins``. The core asks each returned class ``is_available()`` and uses the
    available one with the highest ``priority``, unless the user names one with ``device=``.

    **Returns:** a list of ``llmserve.platforms.base.Platform`` subclasses (classes, not
    instances). ``None`` or an empty list contributes nothing. Return a platform even when its
    hardware is absent: ``is_available()`` is the place to say so, and import its heavy
    dependencies (CUDA libraries, JAX) inside the hook body or the class methods, never at the
    plugin module's import.

    The core contributes ``CpuPlatform`` (name ``"cpu"``, priority 0).

    Added in 0.1.0.
    """


@hookspec
def llmserve_attention_backends() -> dict[str, type]:
    """Contribute attention backends by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in each process that builds a model (the engine-core process for
    the offline ``LLM`` and every worker process when serving), before the model is
    constructed, and by ``llmserve plugins``.

    **Returns:** ``{name: backend class}``. The name is what a platform's
    ``default_attention_backend`` and ``llmserve_select_attention_backend`` refer to. ``None``
    or an empty dict contributes nothing.

    The core contributes ``"torch"``, the paged torch reference backend that runs anywhere.

    Added in 0.1.0.
    """


@hookspec(firstresult=True)
def llmserve_select_attention_backend(platform_name: str, model_arch: str) -> str | None:
    """Pick the attention backend for a model on a platform.

    **Kind:** pick one (``firstresult``): the first non-``None`` answer wins.

    **When / where:** called once per model load, in each process that builds the model, after
    the platform is chosen and before layers are constructed.

    :param platform_name: ``Platform.name`` of the chosen platform, e.g. ``"cpu"``, ``"cuda"``.
    :param model_arch: the HF ``architectures`` name being loaded, e.g. ``"LlamaForCausalLM"``.

    **Returns:** a backend name contributed through ``llmserve_attention_backends``, or ``None``
    to pass. When every plugin passes, the platform's ``default_attention_backend`` is used.
    Naming a backend nobody contributed is an error at model load.

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_model_architectures() -> dict[str, type]:
    """Contribute model implementations by Hugging Face architecture name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in each process that builds a model, when the checkpoint's
    ``config.json`` is read, and by ``llmserve plugins``.

    **Returns:** ``{architecture name: model class}``, the name exactly as it appears in the
    checkpoint's ``config.json`` ``architectures`` list (``"LlamaForCausalLM"``). One class may
    serve several names. ``None`` or an empty dict contributes nothing. Import the model module
    inside the hook body so that listing plugins stays cheap.

    The core contributes ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` and
    ``Qwen3ForCausalLM``.

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_cache_specs() -> dict[str, type]:
    """Contribute the kinds of cache a layer may ask the KV cache manager for.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process when the KV cache manager is built
    (after the model reports which cache kinds its layers need), and by ``llmserve plugins``.

    **Returns:** ``{name: cache spec class}``; a spec class describes the memory one layer needs
    per block or per request (paged attention KV grows with the sequence; a Mamba layer's conv
    and SSM state is fixed per request). ``None`` or an empty dict contributes nothing.

    The core contributes ``"full_attention"`` (paged KV).

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Scheduling
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_scheduling_policies() -> dict[str, type]:
    """Contribute scheduling policies by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process when the scheduler is created, and by
    ``llmserve plugins``. The user selects one with ``SchedulerConfig.policy`` (default
    ``"fcfs"``).

    **Returns:** ``{name: policy class}``. A policy orders waiting requests and chooses whom to
    preempt; it does not touch KV blocks or the token budget, which stay with the scheduler.
    ``None`` or an empty dict contributes nothing.

    The core contributes its built-in policies (``"fcfs"``, ...).

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_logits_processors() -> dict[str, type]:
    """Contribute batch-level logits processors (sampler add-ons) by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the process that runs the sampler (the engine-core process for
    the offline ``LLM``, the workers when serving), when the sampler is built, and by
    ``llmserve plugins``.

    **Returns:** ``{name: processor class}``. A processor works on the whole batch's logits
    tensor at once (no per-request Python loop in the step). ``None`` or an empty dict
    contributes nothing.

    The core contributes its built-in processors.

    Added in 0.1.0.
    """


@hookspec
def llmserve_structured_output_backends() -> dict[str, type]:
    """Contribute structured-output (grammar / JSON schema) backends by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process the first time a request asks for
    structured output, and by ``llmserve plugins``.

    **Returns:** ``{name: backend class}``. A backend compiles a request's grammar and fills
    the token bitmask the sampler applies. ``None`` or an empty dict contributes nothing.

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Front ends: CLI and HTTP
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_cli_commands() -> list[CliCommand]:
    """Contribute subcommands of the ``llmserve`` command line.

    **Kind:** contribute (lists are concatenated; a command name contributed twice is resolved
    like a registry name: warning, a non-default plugin beats the core).

    **When / where:** called once in the ``llmserve`` CLI process, before arguments are parsed.

    **Returns:** a list of ``llmserve.cli.command.CliCommand`` instances. Each adds its own
    arguments to its subparser and runs with the parsed namespace; keep heavy imports inside
    ``run``, since every invocation of ``llmserve`` builds every command's parser. ``None`` or
    an empty list contributes nothing.

    The core contributes ``plugins``.

    Added in 0.1.0.
    """


@hookspec
def llmserve_http_routes(app: Any, engine_client: Any, config: EngineConfig) -> None:
    """Register HTTP routes on the server's FastAPI application.

    **Kind:** contribute (every implementation is called; there is nothing to merge).

    **When / where:** called once in the HTTP front-end process, after the application and the
    engine client exist and before the server accepts connections. The engine core runs in
    another process; reach it only through ``engine_client``.

    :param app: the ``fastapi.FastAPI`` application; add routes or routers to it.
    :param engine_client: the front end's ``llmserve.engine.async_engine.AsyncEngine``
        (``generate()`` streams ``RequestOutput``s, ``abort()`` stops a request). Use it from
        route handlers; do not keep references beyond the app.
    :param config: the frozen ``EngineConfig`` the engine runs with; read it, never modify it.

    **Returns:** ``None``; routes are registered as a side effect on ``app``. Two plugins
    registering the same path is a conflict FastAPI resolves by registration order.

    Added in 0.1.0.
    """


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


@hookspec(historic=False)
def llmserve_engine_started(config: EngineConfig) -> None:
    """Notification that an engine finished starting up.

    **Kind:** notification; every implementation is called. Not historic: a plugin registered
    after start-up does not receive it.

    **When / where:** called once per engine, in the engine-core process, after the model is
    loaded and the KV cache is allocated and before the first step. Runs on the engine's
    start-up path: log or record, do not block.

    :param config: the frozen ``EngineConfig`` the engine runs with; read it, never modify it.

    **Returns:** ``None``; return values are ignored.

    Added in 0.1.0.
    """
