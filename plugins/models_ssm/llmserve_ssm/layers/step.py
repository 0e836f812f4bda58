"""What every Mamba layer of a model reads from one step's ``ForwardContext``, computed once.

The engine hands a state layer its slot tensors (``fctx.kv_caches[i]``, a list of conv and
SSM state ``[num_slots, ...]``), each scheduled sequence's slot (``fctx.state_slots``) and
the attention metadata of the flat batch. From the metadata: a sequence resumes from its
slot when it had tokens before this step (``seq_lens - query_lens > 0``); the step is a pure
decode step when every sequence brings one token, which selects the single-step kernels
(and is the only kind of step a CUDA graph replays).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from llmserve.attention.backend import ForwardContext
from llmserve_ssm.ops.slots import REFERENCE_KERNELS, SlotKernels

#: ``torch`` or ``triton`` forces the kernel set; unset, CUDA and ROCm devices use Triton.
ENV_KERNELS = "LLMSERVE_SSM_KERNELS"


@dataclass
class MambaStep:
    """One step's state-slot view, shared by every Mamba layer of the forward."""

    state_indices: torch.Tensor  # [num_seqs] slot of each sequence
    cu_seqlens: torch.Tensor  # [num_seqs + 1] query_start_loc
    has_initial_state: torch.Tensor  # [num_seqs] bool
    is_decode: bool
    kernels: SlotKernels

    @classmethod
    def of(cls, fctx: ForwardContext, device: torch.device) -> "MambaStep":
        md = fctx.attn_metadata
        if fctx.state_slots is None:
            raise ValueError("a Mamba layer needs ForwardContext.state_slots: the engine did "
                             "not allocate state slots for this model")
        return cls(state_indices=fctx.state_slots, cu_seqlens=md.query_start_loc,
                   has_initial_state=(md.seq_lens - md.query_lens) > 0,
                   is_decode=md.max_query_len == 1, kernels=kernels_for(device.type))


@lru_cache(maxsize=None)
def kernels_for(device_type: str) -> SlotKernels:
    """The Triton kernels on CUDA/ROCm devices, the torch reference elsewhere;
    ``LLMSERVE_SSM_KERNELS`` overrides."""
    choice = os.environ.get(ENV_KERNELS, "")
    if choice not in ("", "torch", "triton"):
        raise ValueError(f"{ENV_KERNELS} must be 'torch' or 'triton', got {choice!r}")
    if choice == "torch" or (not choice and device_type != "cuda"):
        return REFERENCE_KERNELS
    from llmserve_ssm.kernels import TRITON_KERNELS

    return TRITON_KERNELS
