"""UE-DPO's uncertainty-guided token weights λ.

Chosen (preferred) response, blind spots get more pressure:
    I_w = [Δ < q_τ(Δ)],      λ_w = 1 + α · I_w · σ((u - μ_I) / ς_I)
Rejected response, wavering visual tokens get less penalty:
    I_l = [Δ >= q_{1-τ}(Δ)], λ_l = 1 - α · I_l · σ((u - μ_I) / ς_I)
q is the linear-interpolation quantile of Δ, μ_I and ς_I the mean and (Bessel-corrected)
standard deviation of u over the selected set I. Statistics are taken per sequence, or over
every response token of the batch (`gather` concatenates a 1-D tensor across ranks).
Fewer than two selected tokens leave λ = 1.

Categories of response tokens (what `ue-dpo inspect` colours), from the selection sets and the sign of u:
    Type-I blind spot          chosen, in I_w, u > 0: the noised-image guess â outranks a_t on the clean image
    Type-II language prior     chosen, in I_w, u <= 0: a_t is ranked first, but the image barely supports it
    sensitive rejected token   rejected, in I_l: a visually supported token of the rejected answer
    unselected                 every other response token (λ = 1)
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

StatScope = Literal["sequence", "batch"]
MIN_SELECTED_TOKENS = 2
UNSELECTED, TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR, SENSITIVE_REJECTED = range(4)
CATEGORY_NAMES = ("unselected", "Type-I blind spot", "Type-II language prior", "sensitive rejected token")


@dataclass
class TokenWeights:
    weights: torch.Tensor  # λ, shape of u; 1 outside the response mask
    selected: torch.Tensor  # bool, the set I


@dataclass
class _SelectionStats:
    threshold: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    usable: bool


def _selected(delta: torch.Tensor, threshold: torch.Tensor, preferred: bool) -> torch.Tensor:
    return delta < threshold if preferred else delta >= threshold


def _selection_stats(uncertainty: torch.Tensor, delta: torch.Tensor, *, tau: float, preferred: bool) -> _SelectionStats:
    if delta.numel() == 0:
        zero = delta.new_zeros(())
        return _SelectionStats(zero, zero, zero, usable=False)
    quantile = tau if preferred else 1.0 - tau
    threshold = torch.quantile(delta.double(), quantile).to(delta.dtype)
    chosen_u = uncertainty[_selected(delta, threshold, preferred)]
    if chosen_u.numel() < MIN_SELECTED_TOKENS:
        zero = delta.new_zeros(())
        return _SelectionStats(threshold, zero, zero, usable=False)
    return _SelectionStats(threshold, chosen_u.mean(), chosen_u.std(), usable=True)


def blind_spot_weights(
    uncertainty: torch.Tensor,
    delta: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float,
    tau: float,
    preferred: bool,
    scope: StatScope = "sequence",
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> TokenWeights:
    """λ for a `[N, T]` block of responses (all chosen, or all rejected); `mask` marks response tokens.

    Returned weights carry no gradient (they enter the loss as sg(λ)).
    """
    uncertainty, delta, mask = uncertainty.detach().float(), delta.detach().float(), mask.bool()
    sign = 1.0 if preferred else -1.0
    weights = torch.ones_like(uncertainty)
    selected = torch.zeros_like(mask)

    def apply(rows: torch.Tensor | slice, stats: _SelectionStats) -> None:
        if not stats.usable:
            return
        row_selected = _selected(delta[rows], stats.threshold, preferred) & mask[rows]
        standardized = (uncertainty[rows] - stats.mean) / (stats.std + eps)
        weights[rows] = torch.where(row_selected, 1.0 + sign * alpha * torch.sigmoid(standardized), 1.0)
        selected[rows] = row_selected

    if scope == "sequence":
        for row in range(uncertainty.shape[0]):
            row_mask = mask[row]
            apply(row, _selection_stats(uncertainty[row][row_mask], delta[row][row_mask], tau=tau, preferred=preferred))
    elif scope == "batch":
        gather = gather or (lambda values: values)
        all_u, all_delta = gather(uncertainty[mask]), gather(delta[mask])
        apply(slice(None), _selection_stats(all_u, all_delta, tau=tau, preferred=preferred))
    else:
        raise ValueError(f"unknown statistics scope {scope!r}; use 'sequence' or 'batch'")
    return TokenWeights(weights=weights, selected=selected)


def blind_spot_categories(uncertainty: torch.Tensor, selected: torch.Tensor, *, preferred: bool) -> torch.Tensor:
    """Category code per token (indices into CATEGORY_NAMES) for a block of chosen or of rejected rows."""
    if not preferred:
        return torch.where(selected, SENSITIVE_REJECTED, UNSELECTED)
    type_of_selected = torch.where(uncertainty > 0, TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR)
    return torch.where(selected, type_of_selected, UNSELECTED)
