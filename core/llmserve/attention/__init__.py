"""Attention backends: how a layer writes its K/V into the paged cache and attends over it."""

from llmserve.attention.backend import AttentionBackend, AttentionMetadata, ForwardContext

__all__ = ["AttentionBackend", "AttentionMetadata", "ForwardContext"]
