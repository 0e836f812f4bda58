"""The attention layer of the hybrid models: grouped-query attention over the engine's paged
KV cache, with full, partial or no rotary embedding.

Hybrids put a few attention layers among the Mamba layers; each one is a caching layer of its
own, so it reads ``fctx.kv_caches[cache_index]`` (its place among the model's caching layers,
not its layer number). Bamba rotates only the first half of each head (``partial_rotary_factor``);
NemotronH has no positional encoding in attention at all (the Mamba layers order the tokens).

The checkpoints keep q, k and v apart; ``qkv_proj`` holds them in one matmul, and
``models.weights.load_by_name`` loads them (and any other fused projection) through the fused
layer's ``weight_loader`` with a shard id (``QKV_SHARDS``).
"""

from __future__ import annotations


import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import FullAttentionSpec
from llmserve.layers.linear import QKVParallelLinear, RowParallelLinear
from llmserve.layers.rotary import RotaryEmbedding
from llmserve.models.base import ModelBuildContext

#: checkpoint name fragment -> (fused parameter fragment, shard id)
QKV_SHARDS = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
}


class HybridAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 cache_index: int, ctx: ModelBuildContext, *, qkv_bias: bool = False,
                 o_bias: bool = False, rotary: RotaryEmbedding | None = None) -> None:
        """``rotary`` rotates the first ``rotary.head_dim`` channels of each head (all of them
        when that is ``head_dim``); None leaves q and k unrotated."""
        super().__init__()
        if rotary is not None and rotary.head_dim > head_dim:
            raise ValueError(f"rotary dim {rotary.head_dim} exceeds head_dim {head_dim}")
        self.head_dim = head_dim
        self.cache_index = cache_index
        self.qkv_proj = QKVParallelLinear(hidden_size, head_dim, num_heads, num_kv_heads,
                                          bias=qkv_bias, dtype=ctx.dtype,
                                          linear_method=ctx.linear_method)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, bias=o_bias,
                                        dtype=ctx.dtype, linear_method=ctx.linear_method)
        self.rotary = rotary
        self.attn = ctx.attn_backend(self.num_heads, head_dim, self.num_kv_heads,
                                     head_dim ** -0.5)
        self.kv_dtype_bytes = ctx.dtype.itemsize

    def cache_spec(self, block_size: int) -> FullAttentionSpec:
        return FullAttentionSpec(block_size=block_size, num_kv_heads=self.num_kv_heads,
                                 head_size=self.head_dim, dtype_bytes=self.kv_dtype_bytes)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.rotary is not None:
            q, k = self._rotate(positions, q, k)
        out = self.attn.forward(q.contiguous(), k.contiguous(), v.contiguous(),
                                fctx.kv_caches[self.cache_index], fctx.attn_metadata)
        return self.o_proj(out.reshape(-1, q_size))

    def _rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE on the leading ``rotary.head_dim`` channels; the rest pass through."""
        rot = self.rotary.head_dim
        if rot == self.head_dim:
            return self.rotary(positions, q, k)
        q_rot, k_rot = self.rotary(positions, q[..., :rot].contiguous(),
                                   k[..., :rot].contiguous())
        return torch.cat([q_rot, q[..., rot:]], dim=-1), torch.cat([k_rot, k[..., rot:]], dim=-1)
