"""Structured outputs in the engine core: compiling off the step loop, and the batch mask.

The manager owns the backends of one model and a small thread pool. ``submit`` starts (or
reuses) the compilation of a request's constraint and returns a future: the scheduler keeps
the request in its own waiting state until the future is done, so a slow grammar never holds
up the queue or the step. Compiled grammars are cached by ``(backend, GrammarSpec)``, and each
backend reads the vocabulary once, on first use.

Each step, ``fill_bitmask`` writes the masks of the constrained requests that sample, grouped
by backend so that a backend can fill its rows in parallel. Only constrained rows are
allocated or touched.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from llmserve.structured_output.backend import (GrammarError, GrammarMatcher,
                                                StructuredOutputBackend, VocabInfo,
                                                bitmask_width)
from llmserve.structured_output.params import GrammarSpec, StructuredOutputsParams

logger = logging.getLogger(__name__)

#: ``--structured-outputs-backend auto``: these, in order, per request.
AUTO_ORDER = ("xgrammar", "guidance")


#: Compiled grammars kept; the oldest finished one goes first past this.
CACHE_SIZE = 1024


class CompiledGrammar:
    """A compiled constraint and the backend that makes matchers for it."""

    __slots__ = ("backend", "compiled")

    def __init__(self, backend: StructuredOutputBackend, compiled: Any) -> None:
        self.backend = backend
        self.compiled = compiled

    def start(self) -> "RequestGrammar":
        """A request's own state in this grammar, at its start."""
        return RequestGrammar(self.backend, self.backend.matcher(self.compiled))


class RequestGrammar:
    """One request's matcher and the backend it belongs to (masks are filled per backend)."""

    __slots__ = ("backend", "matcher")

    def __init__(self, backend: StructuredOutputBackend, matcher: GrammarMatcher) -> None:
        self.backend = backend
        self.matcher = matcher


class StructuredOutputManager:
    """Compiles constraints on worker threads and builds each step's token mask."""

    def __init__(self, backends: Mapping[str, type[StructuredOutputBackend]], choice: str,
                 vocab_loader: Callable[[], VocabInfo], vocab_size: int,
                 max_workers: int = 2) -> None:
        """``choice`` is a registered backend name or ``"auto"``; ``vocab_loader`` builds the
        model's ``VocabInfo`` (it loads the tokenizer) and is called at most once."""
        if choice != "auto" and choice not in backends:
            raise ValueError(f"structured_outputs_backend must be 'auto' or one of "
                             f"{sorted(backends)}, got {choice!r}")
        self.backend_classes = dict(backends)
        self.choice = choice
        self.order = ([n for n in AUTO_ORDER if n in backends] if choice == "auto"
                      else [choice])
        if not self.order:
            raise ValueError(f"structured_outputs_backend 'auto' needs one of {AUTO_ORDER}; "
                             f"installed: {sorted(backends)}")
        self.vocab_size = vocab_size
        self.width = bitmask_width(vocab_size)
        self._vocab_loader = vocab_loader
        self._vocab: Optional[VocabInfo] = None
        self._backends: dict[str, StructuredOutputBackend] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[tuple[str, ...], GrammarSpec], Future] = OrderedDict()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._max_workers = max_workers

    # -- compiling (off the step loop) --------------------------------------------------

    def submit(self, params: StructuredOutputsParams) -> "Future[CompiledGrammar]":
        """The compiled grammar of ``params``, as a future; identical constraints share one
        compilation. A failed future holds a ``GrammarError`` naming the problem."""
        order = tuple(self.order[:1] if params.disable_fallback else self.order)
        key = (order, params.spec)
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers,
                                                thread_name_prefix="llmserve-grammar")
            future = self._pool.submit(self._compile, order, params.spec)
            self._cache[key] = future
            if len(self._cache) > CACHE_SIZE:
                oldest = next(iter(self._cache))
                if self._cache[oldest].done():
                    del self._cache[oldest]
        return future

    def _compile(self, order: Sequence[str], spec: GrammarSpec) -> CompiledGrammar:
        errors = []
        for name in order:
            backend = self._backend(name)
            try:
                return CompiledGrammar(backend, backend.compile(spec))
            except GrammarError as exc:
                errors.append(str(exc))
        if len(errors) > 1:
            logger.info("no backend could compile %s", spec.describe())
        raise GrammarError("; ".join(errors))

    def _backend(self, name: str) -> StructuredOutputBackend:
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                if self._vocab is None:
                    self._vocab = self._vocab_loader()
                backend = self.backend_classes[name](self._vocab)
                self._backends[name] = backend
            return backend

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the step -----------------------------------------------------------------------

    def fill_bitmask(self, grammars: Sequence[Optional[RequestGrammar]]) -> np.ndarray:
        """The token mask of one step, one row per entry of ``grammars``; a ``None`` entry
        (a request that finished meanwhile) or a terminated grammar allows every token."""
        bitmask = np.full((len(grammars), self.width), -1, dtype=np.int32)
        groups: dict[int, tuple[StructuredOutputBackend, list, list]] = {}
        for row, grammar in enumerate(grammars):
            if grammar is None or grammar.matcher.is_terminated():
                continue
            backend = grammar.backend
            group = groups.get(id(backend))
            if group is None:
                group = groups[id(backend)] = (backend, [], [])
            group[1].append(grammar.matcher)
            group[2].append(row)
        for backend, group_matchers, rows in groups.values():
            backend.fill_bitmasks(group_matchers, bitmask, rows)
        return bitmask
