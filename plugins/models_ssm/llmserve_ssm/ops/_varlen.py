"""The packed variable-length batch every reference kernel takes, and argument checks.

A prefill batch is packed: the tokens of all sequences are concatenated along the token
axis, and ``cu_seqlens`` (vLLM's ``query_start_loc``) holds the sequence boundaries, so
sequence ``i`` owns tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``. There is no padding
token, so no kernel needs a mask. Every sequence must have at least one token: a
sequence with nothing to prefill has no business in a prefill call, and rejecting it
catches off-by-one ``cu_seqlens`` early.

These are reference kernels: they may read ``cu_seqlens`` on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedBatch:
    """Where each sequence of a packed batch lives.

    ``starts`` and ``lengths`` are int64 tensors of shape (num_seqs,) on the tokens'
    device; ``max_len`` is the longest sequence.
    """

    starts: torch.Tensor
    lengths: torch.Tensor
    max_len: int

    @property
    def num_seqs(self) -> int:
        return self.starts.shape[0]

    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) token offsets of each sequence, as Python ints."""
        starts = self.starts.tolist()
        return [(start, start + length) for start, length in zip(starts, self.lengths.tolist())]


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raise ValueError naming ``name`` unless ``tensor`` has exactly shape ``expected``
    (TypeError if it is not a tensor)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(tensor.shape)}")


def check_ndim(name: str, tensor: torch.Tensor, ndim: int) -> None:
    """Raise ValueError naming ``name`` unless ``tensor`` has ``ndim`` dimensions
    (TypeError if it is not a tensor)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")


def unpack_cu_seqlens(cu_seqlens: torch.Tensor, num_tokens: int) -> PackedBatch:
    """Validate ``cu_seqlens`` of shape (num_seqs + 1,) against ``num_tokens`` and unpack it.

    It must be an integer tensor that starts at 0, increases strictly and ends at
    ``num_tokens``.
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
        raise ValueError("cu_seqlens must be a 1-D integer tensor of shape (num_seqs + 1,)")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must have an integer dtype, got {cu_seqlens.dtype}")
    if cu_seqlens.shape[0] < 2:
        raise ValueError("cu_seqlens must hold at least one sequence (num_seqs + 1 >= 2 entries)")
    bounds = cu_seqlens.to(torch.int64)
    if int(bounds[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(bounds[0])}")
    lengths = bounds[1:] - bounds[:-1]
    if bool((lengths <= 0).any()):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {bounds.tolist()}")
    if int(bounds[-1]) != num_tokens:
        raise ValueError(
            f"cu_seqlens must end at the number of tokens ({num_tokens}), got {int(bounds[-1])}"
        )
    return PackedBatch(starts=bounds[:-1], lengths=lengths, max_len=int(lengths.max()))


def initial_state_mask(
    has_initial_state: torch.Tensor | None, num_seqs: int, device: torch.device
) -> torch.Tensor:
    """``has_initial_state`` as a bool tensor of shape (num_seqs,); ``None`` means all False."""
    if has_initial_state is None:
        return torch.zeros(num_seqs, dtype=torch.bool, device=device)
    check_shape("has_initial_state", has_initial_state, (num_seqs,))
    return has_initial_state.to(device=device, dtype=torch.bool)


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The conv activations Mamba checkpoints use: ``"silu"`` (alias ``"swish"``) or ``None``."""
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return torch.nn.functional.silu(y)
    raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")


def check_activation(activation: str | None) -> None:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")
