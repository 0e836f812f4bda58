"""The engine core: model, KV cache, scheduler and runner, driven one ``step()`` at a time.

It runs in the caller's process for ``LLM`` and in its own process when serving. It speaks
token ids only: tokenizing and detokenizing belong to the front end.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable, Optional

from llmserve.executor import make_executor
from llmserve.request import EngineCoreOutput, EngineCoreRequest, Request, RequestStatus
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.spec import KVCacheConfig, check_layer_specs, plan_kv_cache
from llmserve.plugins import collect_registry
from llmserve.runner.base import RunnerConfig
from llmserve.scheduler.output import GrammarBitmask
from llmserve.scheduler.scheduler import Scheduler
from llmserve.structured_output.manager import StructuredOutputManager

if TYPE_CHECKING:
    from llmserve.engine.resolver import ResolvedEngine

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, resolved: "ResolvedEngine", pm) -> None:
        t0 = time.monotonic()
        self.resolved = resolved
        cfg = resolved.config
        platform = resolved.platform

        backends = collect_registry(pm, "llmserve_attention_backends")
        hook_choice = pm.hook.llmserve_select_attention_backend(
            platform_name=platform.name, model_arch=cfg.model.architecture)
        backend_name = hook_choice or platform.default_attention_backend
        if backend_name not in backends:
            raise ValueError(f"attention backend {backend_name!r} is not installed; "
                             f"installed: {sorted(backends)}")
        runner_config = RunnerConfig(
            engine=cfg, hf_config=resolved.hf_config, model_cls=resolved.model_cls,
            attn_backend=backends[backend_name],
            logits_processor_classes=tuple(
                collect_registry(pm, "llmserve_logits_processors").values()),
            load_format=resolved.load_format, platform=platform,
            proposer_cls=(collect_registry(pm, "llmserve_speculative_proposers")[
                cfg.speculative.method] if cfg.speculative is not None else None),
            model_classes=collect_registry(pm, "llmserve_model_architectures"))
        self.executor = make_executor(runner_config)
        #: Where the model runs (the output rank's device when workers hold it); this process
        #: touches no device it does not run on.
        import torch  # only for the device's name: the core itself stays framework-free

        self.device = torch.device(self.executor.device_name())
        try:
            self._start_model(pm, cfg)
        except BaseException:
            self.executor.shutdown()
            raise
        kv_config = self.kv_cache_config
        self.num_blocks = kv_config.num_blocks
        block_size = cfg.cache.block_size
        self.kv_capacity_tokens = kv_config.num_blocks * block_size
        logger.info("KV cache: %d blocks x %d tokens = %d tokens, %d state slots + %d "
                    "prefix snapshots (%.1f MiB) on %s", kv_config.num_blocks, block_size,
                    self.kv_capacity_tokens, kv_config.num_state_slots,
                    kv_config.num_state_snapshots, kv_config.total_bytes / 2**20,
                    platform.name)

        policies = collect_registry(pm, "llmserve_scheduling_policies")
        if cfg.scheduler.policy not in policies:
            raise ValueError(f"scheduling_policy must be one of the installed policies "
                             f"{sorted(policies)}, got {cfg.scheduler.policy!r}")
        self.kv_manager = KVCacheManager.from_config(kv_config, block_size,
                                                     cfg.cache.enable_prefix_caching)
        self.structured_outputs = self._structured_output_manager(pm)
        spec = cfg.speculative
        proposer = runner_config.proposer_cls
        self.scheduler = Scheduler(
            cfg.scheduler, self.kv_manager, policies[cfg.scheduler.policy](cfg.scheduler),
            self.structured_outputs,
            num_speculative_tokens=spec.num_speculative_tokens if spec else 0,
            num_lookahead_tokens=(spec.num_speculative_tokens
                                  if proposer is not None and proposer.needs_lookahead else 0),
            speculate_below=spec.disable_by_batch_size if spec else None)
        #: Host time spent filling grammar bitmasks, and the steps that filled one.
        self.grammar_fill_s = 0.0
        self.grammar_fill_steps = 0
        self._filler: Optional[ThreadPoolExecutor] = None
        self.async_scheduling = cfg.scheduler.async_scheduling
        #: The launched step whose outputs are not read yet (asynchronous scheduling).
        self._in_flight = None
        self.startup_s = time.monotonic() - t0
        pm.hook.llmserve_engine_started(config=cfg)

    @property
    def runner(self):
        """The model runner when it runs in this process (one rank); None when worker
        processes hold the runners."""
        return self.executor.runner

    def _start_model(self, pm, cfg) -> None:
        """Load the model on every rank, size and allocate the KV cache, warm up."""
        self.executor.load_model()
        kv_config = self._plan_kv_cache(pm)
        if cfg.speculative is not None and kv_config.state_specs:
            raise ValueError(f"speculative_config is not supported for {cfg.model.architecture}: "
                             "its per-request state layers cannot roll back rejected drafts")
        self.executor.initialize_kv_cache(kv_config)
        t_warm = time.monotonic()
        self.executor.warm_up()
        self.warm_up_s = time.monotonic() - t_warm
        self.kv_cache_config = kv_config

    def _plan_kv_cache(self, pm) -> KVCacheConfig:
        """Check the runner's per-layer cache specs against the installed kinds, then split
        the smallest memory budget of all ranks between per-request state and paged
        blocks."""
        cfg = self.resolved.config
        specs = self.executor.cache_specs()
        check_layer_specs(specs, collect_registry(pm, "llmserve_cache_specs"))
        override = cfg.cache.num_gpu_blocks_override
        budget = 0 if override is not None else self.executor.memory_budget()
        return plan_kv_cache(specs, budget, cfg.scheduler.max_num_seqs, override,
                             state_snapshots=cfg.cache.enable_prefix_caching)

    def shutdown(self) -> None:
        """Stop the workers (if any); the core cannot step afterwards."""
        self.executor.shutdown()

    def _structured_output_manager(self, pm) -> Optional[StructuredOutputManager]:
        """The grammar compiler and mask filler; None without a tokenizer. The tokenizer is
        loaded, and each backend reads the vocabulary, only when a first constrained request
        arrives (on the compile thread)."""
        resolved = self.resolved
        if resolved.skip_tokenizer_init:
            return None
        from llmserve.engine.input_processor import read_model_facts

        facts = read_model_facts(resolved)
        vocab_size = int(resolved.hf_config["vocab_size"])

        def load_vocab():
            from llmserve.structured_output.backend import VocabInfo
            from llmserve.tokenizer import eos_token_ids, load_tokenizer

            tokenizer = load_tokenizer(facts.tokenizer)
            eos = eos_token_ids(tokenizer, facts.eos_token_id)
            return VocabInfo(tokenizer, vocab_size, tuple(sorted(eos)))

        return StructuredOutputManager(
            collect_registry(pm, "llmserve_structured_output_backends"),
            resolved.config.structured_outputs.backend, load_vocab, vocab_size)

    @property
    def max_model_len(self) -> int:
        return self.resolved.config.model.max_model_len

    def add_request(self, req: EngineCoreRequest) -> Optional[Future]:
        """Queue a request. For a constrained one, returns the future of its grammar: it fails
        with a ``GrammarError`` (a ``ValueError``) if the constraint cannot be compiled, and
        the request is then dropped with nothing allocated."""
        request = Request(req, self.max_model_len)
        self.scheduler.add_request(request)
        return request.grammar_future

    def abort_requests(self, request_ids: Iterable[str],
                       status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> None:
        self.scheduler.finish_requests(list(request_ids), status)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self._in_flight is not None

    def step(self) -> list[EngineCoreOutput]:
        """Schedule and run one step; returns the outputs that became known.

        With ``async_scheduling`` the step is launched before the previous step's tokens are
        read back, so the device never waits for the host's bookkeeping; the outputs returned
        are then the previous step's.
        """
        scheduler_output = self.scheduler.schedule()
        grammar_ids = scheduler_output.grammar_req_ids
        filling = None
        if grammar_ids and self._in_flight is None:
            # Every grammar is up to date: fill the mask beside the forward pass, which may
            # hold this thread (a CPU device computes in the caller's thread).
            filling = self._mask_filler().submit(self.grammar_bitmask, grammar_ids)
        pending = self.executor.execute_model_async(scheduler_output)
        outputs: list[EngineCoreOutput] = []
        if self._in_flight is not None:
            previous_output, previous = self._in_flight
            self._in_flight = None
            outputs = self.scheduler.update_from_output(previous_output, previous.result())
        if grammar_ids:
            # Asynchronous scheduling: the previous step's tokens just reached the grammars
            # (above) while the device runs this step's forward; fill the mask now.
            bitmask = filling.result() if filling is not None else self.grammar_bitmask(
                grammar_ids)
            self.executor.sample_tokens(bitmask)
        if self.async_scheduling and not scheduler_output.is_empty:
            self._in_flight = (scheduler_output, pending)
        else:
            outputs += self.scheduler.update_from_output(scheduler_output, pending.result())
        return outputs

    def _mask_filler(self) -> ThreadPoolExecutor:
        if self._filler is None:
            self._filler = ThreadPoolExecutor(1, thread_name_prefix="llmserve-mask")
        return self._filler

    def grammar_bitmask(self, req_ids: list[str]) -> GrammarBitmask:
        """The token mask of these constrained requests, filled now on the host."""
        t0 = time.perf_counter()
        requests = self.scheduler.requests
        grammars = []
        for rid in req_ids:
            request = requests.get(rid)  # gone if the previous step finished it
            grammars.append(request.grammar if request is not None else None)
        bitmask = self.structured_outputs.fill_bitmask(grammars)
        self.grammar_fill_s += time.perf_counter() - t0
        self.grammar_fill_steps += 1
        return GrammarBitmask(req_ids, bitmask)

    def stats(self) -> dict:
        return self.scheduler.make_stats()
