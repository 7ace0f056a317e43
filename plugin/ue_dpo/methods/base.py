"""What a preference method is: its keys, the passes it asks for, its token weights, its sequence scores, its metrics.

A method never sees the model, packing or the output layer: it asks the step's forward (`StepForward` in
`ue_dpo.llamafactory.step_forward`, or anything with the same calls) for the response-token statistics of a
pass, and turns them into weights and per-sequence log-probs, and those into its loss (by default DPO's sigmoid
loss over `sequence_logps`):

    step.response                        the batch's response tokens (positions, targets, mask, image rows)
    step.statistics(image, probe_ids)    the policy's TargetLogitSummary on the clean image, v' (`noised`) or a
                                         second image the method asked the collator for (`second_images`), all rows;
                                         `kl_from_reference=image` adds the per-token KL(π_ref ‖ πθ)
    step.reference_statistics(image)     the reference's, without gradient (`keep_distribution=True` keeps what
                                         that KL needs)
    step.reference_token_logps()         log π_ref(a_t | v), from the cache of `ue_precompute_ref` when it is on

The stage's argument class (`ue_dpo.config`) reads the methods' keys, and loads no torch: so the methods import torch
and the tensor functions of `ue_dpo.core` where they compute, not at the top of their modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch

    from ue_dpo.core.loss import PreferenceLoss


@dataclass(frozen=True)
class MethodKey:
    """One key of the stage's arguments that only some methods read (a field of `UEDPOArguments`)."""

    name: str
    type: Any  # its annotation, as LLaMA-Factory's argument parser reads it (Literal[...] gives the choices)
    default: Any  # filled in when the key is left out; None stays None
    help: str


@dataclass(frozen=True)
class KeyGroup:
    """Keys that only some methods read: their defaults, the refusal when a method that does not read them is given
    one, and the checks of their values (run once the defaults are filled in)."""

    keys: tuple[MethodKey, ...]
    refusal: str  # str.format with key, value, method (the one given) and readers (the methods that read the keys)
    check: Callable[[Any], None] = lambda args: None  # raises argument_checks.UEDPOUserError

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {key.name: key.default for key in self.keys}


# The dataset columns a method may read, by the names a dataset registers them under in the "columns" of its
# `dataset_info.json` entry (beside LLaMA-Factory's own): m' for each row image, V-DPO's image of each response, and
# MFPO's region mask of each row image (white: the regions its step-k noise fills).
SECOND_IMAGE_COLUMN = "second_image"
CHOSEN_IMAGE_COLUMN = "chosen_image"
REJECTED_IMAGE_COLUMN = "rejected_image"
REGION_MASK_COLUMN = "region_mask"
SUPPLIED_IMAGE = "supplied"  # the name of the second image read from the `second_image` column


@dataclass(frozen=True)
class SecondImage:
    """An image the collator makes for each clean image, for a method's extra passes (`core.second_images`):
    `crop` (mDPO's RandomResizedCrop), `zeros` or `gaussian` (V-DPO's ∅), built and seeded like v' by the run's
    noise seed, the image's content and the image's name, so each name draws its own; `column`, the row's image in
    the `second_image` column; `region_noise`, v' inside the white regions of the row's `region_mask` image and the
    clean image elsewhere (all v' where the mask has no white pixel)."""

    kind: Literal["crop", "zeros", "gaussian", "column", "region_noise"]

    @property
    def column(self) -> str | None:
        """The dataset column the image is made from, if any."""
        return {"column": SECOND_IMAGE_COLUMN, "region_noise": REGION_MASK_COLUMN}.get(self.kind)


@dataclass
class ResponseTokens:
    """Where a batch's responses are, `[2B, K]` (B chosen rows, then B rejected); logits at `positions[k]` predict
    `targets[:, k]`."""

    inputs: dict  # the forward's inputs with the clean image (unshared rows)
    noised_inputs: dict | None  # the same with v', where the collator built it
    positions: torch.Tensor  # [K] logit positions that predict a response token
    targets: torch.Tensor  # token ids a_t
    mask: torch.Tensor  # response tokens
    has_image: torch.Tensor  # [2B]
    row_digests: torch.Tensor | None  # [2B] (with `ue_precompute_ref`)
    second_inputs: dict[str, dict] = field(default_factory=dict)  # the inputs with each second image, by name

    @property
    def pairs(self) -> int:
        return self.targets.shape[0] // 2

    @property
    def weighted_mask(self) -> torch.Tensor:
        """Response tokens of rows with an image: those a weighting that reads the image may weight."""
        return self.mask & self.has_image.unsqueeze(-1)


@dataclass
class WeightedTokens:
    """What the loss, the logged metrics and `ue-dpo inspect` read of one batch."""

    response: ResponseTokens
    policy_logps: torch.Tensor  # log πθ(a_t | v), differentiable
    weights: torch.Tensor  # the method's token weights
    details: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's own per-token quantities, by name


class PreferenceMethod:
    """One preference method. Subclasses set `name`, `key_groups` and `weigh`; the rest has defaults."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one sentence for the help text of `ue_weighting`
    key_groups: ClassVar[tuple[KeyGroup, ...]] = ()
    # why `ue_precompute_ref` cannot serve the method; empty when it can
    precomputed_reference_refusal: ClassVar[str] = ""
    # why the method refuses `dpo_label_smoothing`; empty when its loss smooths labels
    label_smoothing_refusal: ClassVar[str] = ""

    def __init__(self, args):
        self.args = args  # the stage's arguments, defaults filled in

    @property
    def reads_noised_image(self) -> bool:
        """Whether a pass runs on v' (the collator builds v' only then)."""
        return False

    @property
    def second_images(self) -> dict[str, SecondImage]:
        """The images the collator builds for the method's extra passes, by name."""
        return {}

    @property
    def reads_response_images(self) -> bool:
        """Whether each response is scored on its own image (the `chosen_image` and `rejected_image` columns) in
        place of the row's image."""
        return False

    @property
    def data_columns(self) -> tuple[str, ...]:
        """The dataset columns every row with an image must supply, in the order the collator reads them."""
        columns = [image.column for image in self.second_images.values() if image.column is not None]
        if self.reads_response_images:
            columns += [CHOSEN_IMAGE_COLUMN, REJECTED_IMAGE_COLUMN]
        return tuple(dict.fromkeys(columns))

    @classmethod
    def unread_keys(cls, args) -> dict[str, str]:
        """Keys of the method's groups that its other keys' values leave unread, with why: `{key: reason}`. Read
        before the defaults are filled in (a key left out is None), so that only keys given are refused."""
        return {}

    @property
    def weight_target(self) -> str:
        """What the weights multiply: log πθ (`policy`) or log πθ - log π_ref (`logratio`)."""
        return "policy"

    def weigh(self, step) -> WeightedTokens:
        raise NotImplementedError

    @staticmethod
    def unweighted(step) -> WeightedTokens:
        """The clean pass alone, every weight 1."""
        import torch  # see the module's docstring

        clean = step.statistics("clean")
        return WeightedTokens(step.response, clean.target_logprob, torch.ones_like(clean.target_logprob))

    def sequence_logps(self, step, tokens: WeightedTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row weighted (policy, reference) sums."""
        from ue_dpo.core.loss import weighted_sequence_logps  # loads torch (see the module's docstring)

        return weighted_sequence_logps(
            tokens.policy_logps, step.reference_token_logps(), tokens.weights, tokens.response.mask, self.weight_target
        )

    def loss(self, step, tokens: WeightedTokens, *, beta: float, label_smoothing: float) -> PreferenceLoss:
        """Per-pair losses and rewards, and the method's own per-pair terms (logged as `<name>/<term>` means):
        DPO's sigmoid loss over `sequence_logps`, unless the method owns another."""
        from ue_dpo.core.loss import dpo_sigmoid_loss  # loads torch (see the module's docstring)

        policy, reference = self.sequence_logps(step, tokens)
        pairs = tokens.response.pairs
        return dpo_sigmoid_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=beta,
            label_smoothing=label_smoothing,
        )

    def metric_terms(self, tokens: WeightedTokens) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`{key: (values, tokens to average them over)}` of the method's logged means."""
        return {}


def chosen_and_rejected(rows: int) -> tuple[tuple[slice, bool, str], tuple[slice, bool, str]]:
    """(rows, preferred, branch name) of the chosen and of the rejected half of `[2B, ...]` rows."""
    pairs = rows // 2
    return (slice(None, pairs), True, "chosen"), (slice(pairs, None), False, "rejected")
