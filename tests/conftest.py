"""Shared fixtures: a locally trained tokenizer and tiny seeded HF checkpoints."""

from __future__ import annotations

import pytest

from llmserve.testing import TINY_ARCHITECTURES, make_tiny_model, train_tokenizer


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_tokenizer(512)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, bpe_tokenizer) -> dict[str, str]:
    """architecture name -> directory of a tiny random-weight checkpoint."""
    root = tmp_path_factory.mktemp("models")
    return {arch: str(make_tiny_model(root / arch, arch, tokenizer=bpe_tokenizer, seed=i))
            for i, arch in enumerate(TINY_ARCHITECTURES)}
