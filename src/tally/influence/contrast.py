"""Answer-token weights for a contrastive query: the tokens the adapter's training made likelier than the base model.

A plain query gradient is the gradient of the answer's mean token loss. Most of that loss sits on tokens neither the
base model nor the adapter can predict (a new noun, a fresh adjective), so the gradient mostly says "this answer
has unknown words", which every training row also says: on instructions that share no words with training the
plain cosine is near chance. The part of the answer that training put there is where the adapter's log-probability
rises above the base model's. Weighting each answer token's loss by that rise, w_t = max(0, log p_adapter(t) -
log p_base(t)) / sum, makes the query the gradient of "what the adapter learned to say here", the counterfactual
question influence asks. When no token rose (the adapter changed nothing about this answer) the weights fall back
to uniform, so the query is the plain one.
"""

from __future__ import annotations

import torch


def contrast_weights(adapter_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> torch.Tensor:
    """(..., tokens) weights summing to 1 over the last axis: each token's log-probability rise under the adapter."""
    rise = (adapter_logprobs.detach().float() - base_logprobs.detach().float()).clamp_min(0)
    total = rise.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(rise, 1.0 / max(1, rise.shape[-1]))
    return torch.where(total > 1e-6, rise / total.clamp_min(1e-12), uniform)
