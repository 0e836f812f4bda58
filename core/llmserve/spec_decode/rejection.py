"""Verifying draft tokens so that the output follows the target model exactly.

A proposer drafts ``k`` tokens; the target model scores them in one forward pass, giving
its distribution ``p_0 .. p_k`` at each drafted position and one past the last. Speculative
sampling (Leviathan et al. 2023; Chen et al. 2023) accepts draft ``d_i`` with probability
``min(1, p_i(d_i) / q_i(d_i))``, where ``q_i`` is the draft's own distribution, and at the
first rejection draws a replacement from ``normalize(max(0, p_i - q_i))``; when every draft
is accepted it draws one more token from ``p_k``. Each emitted token is then distributed as
the target alone would have sampled it. A proposer that drafts deterministically (n-gram
lookup, greedy drafts) has ``q_i`` one-hot at ``d_i``: acceptance is ``p_i(d_i)`` and the
replacement is drawn from ``p_i`` without ``d_i``. Greedy rows accept while the target's
argmax equals the draft and end with the target's argmax.

Everything is batched tensor work with no host synchronisation. Random draws use the
exponential race as the sampler does, and a seeded row draws its uniforms from its own
generator, so its tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

#: Marks the positions after a row's last emitted token in ``output_token_ids``.
PAD = -1


class Verified(NamedTuple):
    """``output_token_ids`` [B, k+1]: the accepted drafts, then the replacement or bonus
    token, then ``PAD``; ``num_accepted`` [B]: drafts accepted (tokens emitted minus one)."""

    output_token_ids: torch.Tensor
    num_accepted: torch.Tensor


def rejection_sample(target_probs: torch.Tensor, draft_token_ids: torch.Tensor,
                     num_drafts: torch.Tensor, draft_probs: Optional[torch.Tensor] = None,
                     is_greedy: Optional[torch.Tensor] = None,
                     generators: Optional[dict[int, torch.Generator]] = None,
                     target_argmax: Optional[torch.Tensor] = None) -> Verified:
    """Verify each row's drafts against the target.

    Args:
        target_probs: [B, k+1, V] the target's probabilities (after temperature, top-k/p) at
            each drafted position and one past the last.
        draft_token_ids: [B, k] the drafts; entries at and past ``num_drafts`` are ignored.
        num_drafts: [B] how many drafts each row has (0..k).
        draft_probs: [B, k, V] the draft's probabilities, or None for deterministic drafts.
        is_greedy: [B] bool, rows decoded greedily (None: none).
        generators: row -> generator for seeded rows.
        target_argmax: [B, k+1] the target's greedy token at each position, for greedy rows
            (default: the argmax of ``target_probs``; pass the argmax of the logits so that
            a near-tie decides as decoding without speculation does).
    """
    if target_probs.dim() != 3 or draft_token_ids.dim() != 2:
        raise ValueError(f"target_probs must be [B, k+1, V] and draft_token_ids [B, k], got "
                         f"{tuple(target_probs.shape)} and {tuple(draft_token_ids.shape)}")
    batch, k = draft_token_ids.shape
    if target_probs.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_probs must be [{batch}, {k + 1}, V] for {k} drafts per row, "
                         f"got {tuple(target_probs.shape)}")
    if draft_probs is not None and draft_probs.shape != (batch, k, target_probs.shape[2]):
        raise ValueError(f"draft_probs must be [{batch}, {k}, {target_probs.shape[2]}], got "
                         f"{tuple(draft_probs.shape)}")
    dev = target_probs.device
    drafts = draft_token_ids.clamp(min=0)
    positions = torch.arange(k, device=dev)
    valid = positions[None, :] < num_drafts[:, None]

    uniforms = torch.rand(batch, k, device=dev)
    for row, gen in (generators or {}).items():
        uniforms[row].uniform_(generator=gen)
    # Accept d_i when u_i < p_i(d_i) / q_i(d_i), i.e. u_i * q_i(d_i) < p_i(d_i).
    p_draft = target_probs[:, :k].gather(2, drafts[:, :, None]).squeeze(2)
    q_draft = (draft_probs.gather(2, drafts[:, :, None]).squeeze(2) if draft_probs is not None
               else torch.ones_like(p_draft))
    accept = uniforms * q_draft < p_draft
    if is_greedy is not None and target_argmax is None:
        target_argmax = target_probs.argmax(dim=2)
    if is_greedy is not None:
        greedy_accept = target_argmax[:, :k] == drafts
        accept = torch.where(is_greedy[:, None], greedy_accept, accept)
    accept &= valid
    # Accepted drafts form a prefix: count up to the first rejection (or the drafts' end).
    num_accepted = accept.int().cumprod(dim=1).sum(dim=1)

    # The distribution of the token after the accepted prefix: the residual at a rejection,
    # the target's own one past the last draft.
    rows = torch.arange(batch, device=dev)
    final = target_probs[rows, num_accepted].float()
    rejected = num_accepted < num_drafts
    at = num_accepted.clamp(max=max(k - 1, 0))
    if k:
        if draft_probs is not None:
            residual = (final - draft_probs[rows, at].float()).clamp_(min=0)
        else:
            residual = final.scatter(1, drafts[rows, at][:, None], 0.0)
        final = torch.where(rejected[:, None], residual, final)
    noise = _exponential_noise(final.shape, dev, generators)
    token = (final / noise).argmax(dim=1)
    if is_greedy is not None:
        greedy_token = target_argmax[rows, num_accepted]
        token = torch.where(is_greedy, greedy_token, token)

    out = torch.full((batch, k + 1), PAD, dtype=torch.long, device=dev)
    keep = positions[None, :] < num_accepted[:, None]
    out[:, :k] = torch.where(keep, drafts, out[:, :k])
    out[rows, num_accepted] = token
    return Verified(out, num_accepted)


def greedy_verify(target_argmax: torch.Tensor, draft_token_ids: torch.Tensor,
                  num_drafts: torch.Tensor) -> Verified:
    """``rejection_sample`` for a batch whose rows are all greedy: accept while the target's
    argmax [B, k+1] equals the draft, then emit the target's argmax. No probabilities."""
    batch, k = draft_token_ids.shape
    dev = draft_token_ids.device
    positions = torch.arange(k, device=dev)
    accept = (target_argmax[:, :k] == draft_token_ids) & (positions[None, :]
                                                         < num_drafts[:, None])
    num_accepted = accept.int().cumprod(dim=1).sum(dim=1)
    out = torch.where(positions[None, :] < num_accepted[:, None], draft_token_ids, PAD)
    out = torch.cat([out, torch.full((batch, 1), PAD, dtype=torch.long, device=dev)], dim=1)
    rows = torch.arange(batch, device=dev)
    out[rows, num_accepted] = target_argmax[rows, num_accepted]
    return Verified(out, num_accepted)


def _exponential_noise(shape, device, generators) -> torch.Tensor:
    """Exponential(1) noise for the race ``argmax(p / E)``, seeded rows from their own
    generators; clamped so that a zero-probability token never wins."""
    u = torch.rand(shape, device=device)
    for row, gen in (generators or {}).items():
        u[row].uniform_(generator=gen)
    return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_()
