"""Fixtures of the structured-output suites: three models, one per vocabulary family, and
the grammar backends built on them (once per session: reading a vocabulary is the slow part).
"""

from __future__ import annotations

import pytest

from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.default_plugins import llmserve_structured_output_backends
from vocab_models import (VOCAB_SIZE, VocabModel, byte_fallback_tokenizer,
                          byte_level_tokenizer, load_vocab_model, make_vocab_model)


@pytest.fixture(scope="session")
def vocab_models(tmp_path_factory) -> dict[str, VocabModel]:
    root = tmp_path_factory.mktemp("vocab_models")
    # The byte-fallback model's logits are padded past its tokenizer, as many checkpoints'
    # are: the padding ids must never be allowed by a grammar.
    paths = {
        "byte_level": make_vocab_model(root / "byte_level", byte_level_tokenizer(), seed=1,
                                       vocab_size=VOCAB_SIZE),
        "byte_fallback": make_vocab_model(root / "byte_fallback", byte_fallback_tokenizer(),
                                          seed=2, vocab_size=VOCAB_SIZE + 24),
        "default": DEFAULT_MODEL_PATH,
    }
    return {name: load_vocab_model(name, path) for name, path in paths.items()}


@pytest.fixture(scope="session")
def backend_classes() -> dict:
    return llmserve_structured_output_backends()


@pytest.fixture(scope="session")
def make_backend(vocab_models, backend_classes):
    """``make_backend(backend_name, model_name)``: the backend of that model, built once."""
    built = {}

    def make(backend_name: str, model_name: str):
        key = (backend_name, model_name)
        if key not in built:
            built[key] = backend_classes[backend_name](vocab_models[model_name].vocab_info())
        return built[key]

    return make
