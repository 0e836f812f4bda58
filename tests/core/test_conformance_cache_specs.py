"""The cache-spec conformance kit on the built-in kinds and on a plugin's state kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from llmserve import hookimpl
from llmserve.kv_cache.spec import FullAttentionSpec, PerRequestStateSpec, SlidingWindowSpec
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.plugin_testing.cache_spec import check_cache_spec, check_cache_spec_registered

BS = 16
FULL = FullAttentionSpec(BS, 2, 8, 2)
WINDOW = SlidingWindowSpec(BS, 2, 8, 2, sliding_window=24)


@dataclass(frozen=True)
class ConvStateSpec(PerRequestStateSpec):
    """A test plugin's fixed per-request state: a short conv window of a few channels."""

    kind: ClassVar[str] = "test_conv_state"


CONV = ConvStateSpec(shapes=((3, 8),), dtype_bytes=4)


class ConvStatePlugin:
    @hookimpl
    def llmserve_cache_specs(self):
        return {"test_conv_state": ConvStateSpec}


@pytest.mark.parametrize("layers", [[FULL, FULL], [WINDOW, WINDOW], [FULL, WINDOW],
                                    [CONV, CONV], [FULL, CONV, FULL, CONV]],
                         ids=["full", "window", "mixed", "state", "hybrid"])
def test_kinds_conform(layers):
    check_cache_spec(layers, block_size=BS)


def test_plugin_state_kind_is_registered_through_the_hook():
    pm = fresh_plugin_manager()
    with pytest.raises(ValueError, match="test_conv_state"):
        check_cache_spec_registered(pm, CONV)
    with registered_plugin(pm, ConvStatePlugin(), "conv"):
        check_cache_spec_registered(pm, CONV)


def test_the_kit_catches_a_manager_that_keeps_blocks(monkeypatch):
    from llmserve.kv_cache import manager

    monkeypatch.setattr(manager.KVCacheManager, "free", lambda self, request: None)
    with pytest.raises(AssertionError, match="state slot kept after free|still held"):
        check_cache_spec([FULL, CONV], block_size=BS)
