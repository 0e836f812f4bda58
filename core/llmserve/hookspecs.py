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

**Types.** Each contribute hook's return annotation is its contract, and the core enforces it
entry by entry when it builds a registry (``llmserve.plugins.ENTRY_TYPES``): an entry of the
wrong type from a third-party plugin is logged and skipped (its other entries still count), one
from the core's defaults raises ``TypeError``. The classes named in the annotations are part of
the plugin API (``llmserve.plugin_api``).

**Versions.** ``llmserve.PLUGIN_API_VERSION`` (``"1.8"``) versions this catalogue and the
modules of ``llmserve.plugin_api`` semantically. A plugin declares the range it supports on its
entry-point module, ``LLMSERVE_PLUGIN_API = ">=1.0,<2"``; outside that range it is skipped with
a warning, and without a declaration it loads with a warning.

**Deprecations.** Nothing is removed without warning. A hook, or a parameter of one, is
deprecated for at least one minor release of the plugin API before it is removed (which bumps
the major version): the spec gains ``warn_on_impl=DeprecationWarning("...")`` (a hook) or
``warn_on_impl_args={"name": DeprecationWarning("...")}`` (a parameter), so pluggy warns every
plugin that implements it when the plugin is registered, and the hook's docstring says what to
use instead and in which version it goes.

Plugin managers are built per process (``llmserve.plugins.get_plugin_manager``): when serving,
the HTTP front-end process and the engine-core process (which builds and runs the model) build
their own from the installed entry points. A plugin registered by hand in one process is
therefore not seen in the other; ship it as an entry point in the group ``llmserve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmserve.plugin_markers import hookspec

if TYPE_CHECKING:
    from llmserve.attention.backend import AttentionBackend
    from llmserve.cli.command import CliCommand
    from llmserve.config import EngineConfig
    from llmserve.kv_cache.spec import CacheSpec
    from llmserve.models.interface import CausalLM
    from llmserve.platforms.base import Platform
    from llmserve.sample.logits_processor import LogitsProcessor
    from llmserve.scheduler.policy import SchedulingPolicy
    from llmserve.spec_decode.proposer import Proposer
    from llmserve.structured_output.backend import StructuredOutputBackend
    from llmserve.tool_parsers.base import ToolParser


# --------------------------------------------------------------------------------------------
# Platform and kernels
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_platforms() -> list[type[Platform]]:
    """Contribute hardware platforms.

    **Kind:** contribute (the core concatenates the lists of all plugins).

    **When / where:** called when an engine is created, wherever the device is chosen: the
    caller's process for the offline ``LLM``; when serving, the HTTP front-end process (which
    checks the arguments first) and the engine-core process. Also by ``llmserve plugins``.
    The core asks each returned class ``is_available()`` and uses the available one with the
    highest ``priority``, unless the user names one with ``device=``.

    **Returns:** a list of ``llmserve.platforms.base.Platform`` subclasses (classes, not
    instances; anything else is skipped with a warning). ``None`` or an empty list contributes
    nothing. Return a platform even when its hardware is absent: ``is_available()`` is the
    place to say so, and import its heavy dependencies (CUDA libraries, JAX) inside the hook
    body or the class methods, never at the plugin module's import.

    The core contributes ``CpuPlatform`` (name ``"cpu"``, priority 0).

    Added in 0.1.0 (plugin API 1.0).
    """


@hookspec
def llmserve_attention_backends() -> dict[str, type[AttentionBackend]]:
    """Contribute attention backends by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process (the caller's process for the offline
    ``LLM``), before the model is constructed, and by ``llmserve plugins``.

    **Returns:** ``{name: backend class}``, subclasses of
    ``llmserve.attention.backend.AttentionBackend`` (they implement ``forward``). The name is
    what a platform's ``default_attention_backend`` and ``llmserve_select_attention_backend``
    refer to. ``None`` or an empty dict contributes nothing.

    The core contributes ``"torch"``, the paged torch reference backend that runs anywhere.

    Added in 0.1.0 (plugin API 1.0).
    """


@hookspec(firstresult=True)
def llmserve_select_attention_backend(platform_name: str, model_arch: str) -> str | None:
    """Pick the attention backend for a model on a platform.

    **Kind:** pick one (``firstresult``): the first non-``None`` answer wins.

    **When / where:** called once per model load, in the engine-core process, after the
    platform is chosen and before layers are constructed.

    :param platform_name: ``Platform.name`` of the chosen platform, e.g. ``"cpu"``, ``"cuda"``.
    :param model_arch: the HF ``architectures`` name being loaded, e.g. ``"LlamaForCausalLM"``.

    **Returns:** a backend name contributed through ``llmserve_attention_backends``, or ``None``
    to pass. When every plugin passes, the platform's ``default_attention_backend`` is used.
    Naming a backend nobody contributed is an error at model load.

    Added in 0.1.0 (plugin API 1.0).
    """


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_model_architectures() -> dict[str, type[CausalLM]]:
    """Contribute model implementations by Hugging Face architecture name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called wherever the engine's configuration is resolved, when the
    checkpoint's ``config.json`` is read: the caller's process for the offline ``LLM``; when
    serving, the HTTP front-end process (which checks the arguments before it starts the
    engine core) and the engine-core process, which builds the model. Also by
    ``llmserve plugins``.

    **Returns:** ``{architecture name: model class}``, the name exactly as it appears in the
    checkpoint's ``config.json`` ``architectures`` list (``"LlamaForCausalLM"``). A model class
    implements the ``llmserve.models.interface.CausalLM`` protocol (``__init__(cfg, ctx)``,
    ``forward``, ``compute_logits``, ``cache_specs``, ``load_weights`` and the classmethod
    ``build_context_flags``); a class lacking one is skipped with a warning naming what it
    lacks. One class may serve several names. ``None`` or an empty dict contributes nothing.
    Import the model module inside the hook body so that listing plugins stays cheap.

    The core contributes ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` and
    ``Qwen3ForCausalLM``, and the EAGLE draft heads ``EagleLlamaForCausalLM``,
    ``Eagle3LlamaForCausalLM`` and ``LlamaForCausalLMEagle3``, which the ``eagle`` and
    ``eagle3`` speculative methods load (they are not servable models).

    Added in 0.1.0 (plugin API 1.0).
    """


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_cache_specs() -> dict[str, type[CacheSpec]]:
    """Contribute the kinds of cache a layer may ask the KV cache manager for.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process when the KV cache manager is built
    (after the model reports which cache kinds its layers need), and by ``llmserve plugins``.

    **Returns:** ``{name: cache spec class}``, subclasses of
    ``llmserve.kv_cache.spec.CacheSpec`` registered under their ``kind``. A spec class
    describes the memory one layer needs per block or per request (paged attention KV grows
    with the sequence; a Mamba layer's conv and SSM state is fixed per request). ``None`` or
    an empty dict contributes nothing.

    The core contributes ``"full_attention"`` and ``"sliding_window"`` (paged K/V) and
    ``"per_request_state"`` (a fixed state per running request).

    Added in 0.1.0 (plugin API 1.0).
    """


# --------------------------------------------------------------------------------------------
# Scheduling
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_scheduling_policies() -> dict[str, type[SchedulingPolicy]]:
    """Contribute scheduling policies by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process when the scheduler is created, and by
    ``llmserve plugins``. The user selects one with ``SchedulerConfig.policy`` (default
    ``"fcfs"``).

    **Returns:** ``{name: policy class}``, subclasses of
    ``llmserve.scheduler.policy.SchedulingPolicy``. The scheduler constructs the chosen one with
    the ``SchedulerConfig`` (whose ``policy_config``, from ``--scheduling-policy-config``, the
    policy's ``Options`` model validates); it owns the waiting queue, and its decisions
    (``peek``/``pop``: whom to admit next; ``choose_victim``: whom to preempt) receive a frozen
    ``SchedulingContext`` (KV cache usage, free blocks, token budget, queue lengths, ``now``,
    ``cached_prefix_tokens``) built once per step. ``on_step`` receives a ``StepFeedback``
    (tokens scheduled per request, preemptions, finishes) once per step, and ``metrics`` reports
    samples for ``/metrics``. It does not touch KV blocks, the token budget or request state,
    which stay with the scheduler. ``None`` or an empty dict contributes nothing.

    The core contributes ``"fcfs"`` and ``"priority"``; ``llmserve-schedulers`` adds
    ``"fair"``, ``"sjf"``, ``"deadline"`` and ``"cache-aware"``.

    Added in 0.1.0 (plugin API 1.0); options, feedback and metrics in plugin API 1.2.
    """


@hookspec
def llmserve_speculative_proposers() -> dict[str, type[Proposer]]:
    """Contribute speculative-decoding methods (draft-token proposers) by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called when the engine configuration is resolved (to check
    ``SpeculativeConfig.method``) and in the engine-core process when the model runner is
    built, and by ``llmserve plugins``. The user picks one with ``--speculative-config
    '{"method": NAME, "num_speculative_tokens": k, ...}'``.

    **Returns:** ``{name: proposer class}``, subclasses of
    ``llmserve.spec_decode.proposer.Proposer``. The runner builds the chosen one with a
    ``ProposerContext`` (the ``SpeculativeConfig``, the target's directory and config, the
    device, a ``load_model`` that builds any installed architecture, and the runner's
    attention-metadata and upload helpers), and after each step calls ``propose`` with a
    ``ProposalBatch`` (the decoding requests' tokens and block tables, on the host). A proposer
    that runs its own model adds its layers to the KV plan through ``cache_specs``; its
    caches share the target's block tables, and ``needs_lookahead`` reserves slots for its
    own decode steps. Drafts are verified exactly by the core's rejection sampler: a proposer
    only affects speed, never the output distribution.

    The core contributes ``"ngram"`` (prompt lookup), ``"draft_model"``, and ``"eagle"`` and
    ``"eagle3"`` (EAGLE-1 and EAGLE-3 heads in vLLM's checkpoint layouts, reading the
    target's hidden states).

    Added in plugin API 1.4; 1.5 lets a proposer read the target's hidden states
    (``observes_target``, ``observe``, ``target_layers``); 1.6 lets it draft on the device
    before the previous step's tokens reach the host (``propose_pending``, asynchronous
    scheduling).
    """


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@hookspec
def llmserve_logits_processors() -> dict[str, type[LogitsProcessor]]:
    """Contribute batch-level logits processors (sampler add-ons) by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process (the caller's process for the offline
    ``LLM``), where the sampler runs, when the sampler is built, and by ``llmserve plugins``.

    **Returns:** ``{name: processor class}``, subclasses of
    ``llmserve.sample.logits_processor.LogitsProcessor``. A processor works on the whole
    batch's logits tensor at once (no per-request Python loop in the step). ``None`` or an
    empty dict contributes nothing.

    The core contributes its built-in processors.

    Added in 0.1.0 (plugin API 1.0).
    """


@hookspec
def llmserve_structured_output_backends() -> dict[str, type[StructuredOutputBackend]]:
    """Contribute structured-output (grammar) backends by name.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the engine-core process (the caller's process for the offline
    ``LLM``) when the engine starts, and by ``llmserve plugins``. The user picks one with
    ``--structured-outputs-backend NAME`` (``EngineArgs.structured_outputs_backend``); the
    default ``auto`` takes ``"xgrammar"`` and falls back to ``"guidance"``, per request, for a
    constraint xgrammar cannot compile.

    **Returns:** ``{name: backend class}``, subclasses of
    ``llmserve.structured_output.backend.StructuredOutputBackend``. The core constructs one
    instance per model with the model's ``VocabInfo`` (its tokenizer, the logits width and the
    EOS ids) on first use; ``compile`` runs on the core's compile threads and raises
    ``GrammarError`` for a constraint it cannot take; ``matcher`` makes one
    ``GrammarMatcher`` per request, which fills its row of the step's token bitmask (a host
    ``int32`` array, one bit per token). Import the grammar library inside the class, not at
    the plugin module's import. ``None`` or an empty dict contributes nothing.

    The core contributes ``"xgrammar"`` and ``"guidance"`` (llguidance).

    Added in 0.1.0 (plugin API 1.1).
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

    **Returns:** a list of ``llmserve.cli.command.CliCommand`` instances (not classes). Each
    adds its own arguments to its subparser and runs with the parsed namespace; keep heavy
    imports inside ``run``, since every invocation of ``llmserve`` builds every command's
    parser. ``None`` or an empty list contributes nothing.

    The core contributes ``plugins``.

    Added in 0.1.0 (plugin API 1.0).
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

    Added in 0.1.0 (plugin API 1.0).
    """


@hookspec
def llmserve_tool_parsers() -> dict[str, type[ToolParser]]:
    """Contribute tool-call parsers by name: how a model's text becomes OpenAI ``tool_calls``.

    **Kind:** contribute (dicts are merged by name).

    **When / where:** called in the HTTP front-end process when ``llmserve serve`` checks its
    flags and when the application is built with ``--tool-call-parser NAME`` (which picks one
    by name), and by ``llmserve plugins``. The engine core never calls it.

    **Returns:** ``{name: parser class}``, subclasses of
    ``llmserve.tool_parsers.base.ToolParser``. With ``--enable-auto-tool-choice`` and
    ``tool_choice: "auto"``, the server constructs the chosen class with the tokenizer for each
    choice of each request and asks it for the calls in the answer: ``extract_tool_calls``
    for a whole answer, ``extract_tool_calls_streaming`` on every new piece of a stream and
    ``finish_streaming`` at its end. Parsers only read text; the server gives calls their ids
    and builds the response. ``None`` or an empty dict contributes nothing.

    The core contributes ``"hermes"`` (``<tool_call>`` tags: Hermes 2 Pro, Qwen2.5, Qwen3) and
    ``"llama3_json"`` (Llama 3.1's JSON calls).

    Added in 0.1.0 (plugin API 1.1).
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

    Added in 0.1.0 (plugin API 1.0).
    """
