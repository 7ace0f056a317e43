"""The `ue_*` keys of `stage: ue_dpo`, with defaults, help text and validation."""

from dataclasses import dataclass, field
from typing import Literal

NOISE_SPACES = ("pixel_values", "image")
NOISE_SCHEDULES = ("sigmoid", "linear")
STAT_SCOPES = ("sequence", "batch")
WEIGHT_TARGETS = ("policy", "logratio")
BRANCHES = ("both", "chosen", "rejected")
WEIGHTINGS = ("ue", "tpo", "ddpo", "uniform")
DEFAULT_DDPO_GAMMA = 3.0  # RLAIF-V's `dpo_token_weight` default
# config.json `model_type` -> the LLaMA-Factory template the stage trains it with (training, evaluation, inspect)
TEMPLATE_BY_MODEL_TYPE = {"llava": "llava", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl"}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}: {value}` is not supported; use one of: {', '.join(allowed)}.")


@dataclass
class UEDPOArguments:
    """Mixed into LLaMA-Factory's FinetuningArguments; validated only when `stage: ue_dpo`."""

    ue_weighting: Literal["ue", "tpo", "ddpo", "uniform"] = field(
        default="ue",
        metadata={
            "help": "Token weighting of the DPO log-probs: ue (UE-DPO, default), tpo (alibaba/TPO: w = σ(s)+0.5 on "
            "chosen, 1-σ(s)+0.5 on rejected tokens, s = logit(a|v) - logit(a|v'), added as log w to policy and "
            "reference), ddpo (RLHF-V's dense DPO: ddpo_gamma on the tokens that differ between chosen and "
            "rejected, on policy and reference) or uniform (plain DPO). The ue_alpha, ue_tau, ue_stat_scope, "
            "ue_weight_target and ue_branches keys apply to ue only; the ue_noise_* keys to ue and tpo."
        },
    )
    ddpo_gamma: float = field(
        default=DEFAULT_DDPO_GAMMA,
        metadata={
            "help": "γ > 0 of `ue_weighting: ddpo`: the weight of differing tokens (default 3.0 as in RLAIF-V; the "
            "RLHF-V paper uses 5; 1 is plain DPO)."
        },
    )
    ue_alpha: float = field(
        default=0.3,
        metadata={"help": "UE-DPO weight strength α in [0, 1): λ_w ∈ [1, 1+α], λ_l ∈ [1-α, 1]. 0 gives plain DPO."},
    )
    ue_tau: float = field(
        default=0.4,
        metadata={
            "help": "Quantile τ in (0, 0.5]: chosen tokens with Δ below the τ-quantile and rejected tokens with Δ "
            "at or above the (1-τ)-quantile are selected for re-weighting."
        },
    )
    ue_noise_step: int = field(
        default=500,
        metadata={"help": "Diffusion step k in [0, 999] of the counterfactual image v' (500: sqrt(abar) ≈ 0.863)."},
    )
    ue_noise_schedule: Literal["sigmoid", "linear"] = field(
        default="sigmoid",
        metadata={"help": "Beta schedule: sigmoid (VCD/TPO, 1e-5..5e-3, in float32 as they compute it) or linear "
                  "(DDPM, 1e-4..0.02)."},
    )
    ue_noise_space: Literal["pixel_values", "image"] = field(
        default="pixel_values",
        metadata={
            "help": "Where the noise is added: pixel_values (VCD: the processor's normalised tensor, one ε per image "
            "pixel, so Qwen2-VL's two temporal copies of a patch share it) or image (TPO: ToTensor, noise and "
            "ToPILImage on the image at its own resolution, before any resizing; ToPILImage's byte conversion "
            "truncates and wraps out-of-range values modulo 256, it does not clamp them)."
        },
    )
    ue_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the image noise; with the sample's content and the noise step it fixes v'. "
            "Default: the training `seed`."
        },
    )
    ue_stat_scope: Literal["sequence", "batch"] = field(
        default="sequence",
        metadata={
            "help": "Over which tokens the quantile q and the mean/std of u are taken: each response (sequence) "
            "or all responses of the global batch across ranks (batch)."
        },
    )
    ue_weight_target: Literal["policy", "logratio"] = field(
        default="policy",
        metadata={"help": "λ multiplies log πθ (policy, the paper) or the log-ratio log πθ - log π_ref (logratio)."},
    )
    ue_branches: Literal["both", "chosen", "rejected"] = field(
        default="both",
        metadata={
            "help": "Which responses get λ: both, chosen only (the paper's 'w/o dispref.') or rejected only "
            "('w/o pref.'); the other keeps λ = 1."
        },
    )
    ue_token_chunk_size: int = field(
        default=1024,
        metadata={
            "help": "Response tokens projected onto the vocabulary at a time (>= 1); with ue_vocab_chunk_size it "
            "bounds the float32 logits held at once (default 1024 x 16384: 64 MiB)."
        },
    )
    ue_vocab_chunk_size: int = field(
        default=16384,
        metadata={"help": "Vocabulary entries per projection block (>= 1), with a running max/log-sum-exp/argmax."},
    )
    ue_precompute_ref: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference log-probs of the whole training set once before the first step and "
            "skip the reference pass in training; cached on disk, keyed by model, data and template."
        },
    )
    ue_ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the ue_precompute_ref cache. Default: `<output_dir>/ue_ref_cache`."},
    )
    ue_dpo_stage: bool = field(
        default=False,
        init=False,
        metadata={"help": "Set when `stage: ue_dpo` was requested (LLaMA-Factory then sees `stage: dpo`)."},
    )

    @property
    def uses_noised_image(self) -> bool:
        """Whether the weighting reads a pass on v' (UE-DPO with α > 0, TPO); otherwise the collator builds no v'."""
        return self.ue_weighting == "tpo" or (self.ue_weighting == "ue" and self.ue_alpha > 0)

    def validate_ue_dpo(self, *, pref_loss: str, ld_alpha: float | None) -> None:
        if not 0.0 <= self.ue_alpha < 1.0:
            raise ValueError(
                f"`ue_alpha: {self.ue_alpha}` is out of range; UE-DPO needs 0 <= ue_alpha < 1 "
                "(λ_l = 1 - α·σ(·) must stay positive). The paper uses 0.15-0.3."
            )
        if not 0.0 < self.ue_tau <= 0.5:
            raise ValueError(f"`ue_tau: {self.ue_tau}` is out of range; use 0 < ue_tau <= 0.5 (default 0.4).")
        if not 0 <= self.ue_noise_step <= 999:
            raise ValueError(f"`ue_noise_step: {self.ue_noise_step}` is out of range; use an integer in [0, 999].")
        _choice("ue_noise_schedule", self.ue_noise_schedule, NOISE_SCHEDULES)
        _choice("ue_noise_space", self.ue_noise_space, NOISE_SPACES)
        _choice("ue_stat_scope", self.ue_stat_scope, STAT_SCOPES)
        _choice("ue_weight_target", self.ue_weight_target, WEIGHT_TARGETS)
        _choice("ue_branches", self.ue_branches, BRANCHES)
        for name in ("ue_token_chunk_size", "ue_vocab_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}: {getattr(self, name)}` must be a positive integer.")
        _choice("ue_weighting", self.ue_weighting, WEIGHTINGS)
        if not self.ddpo_gamma > 0:
            raise ValueError(f"`ddpo_gamma: {self.ddpo_gamma}` must be positive (default {DEFAULT_DDPO_GAMMA}).")
        if self.ue_weighting != "ue":
            for name, default in (("ue_branches", "both"), ("ue_weight_target", "policy")):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"`{name}: {getattr(self, name)}` applies to `ue_weighting: ue` only; remove it or use "
                        "`ue_weighting: ue`."
                    )
        if self.ue_weighting != "ddpo" and self.ddpo_gamma != DEFAULT_DDPO_GAMMA:
            raise ValueError(
                f"`ddpo_gamma` applies to `ue_weighting: ddpo` only, but `ue_weighting: {self.ue_weighting}`; "
                "remove `ddpo_gamma` or set `ue_weighting: ddpo`."
            )
        if self.ue_weighting == "tpo" and self.ue_precompute_ref:
            raise ValueError(
                "`ue_precompute_ref` cannot be used with `ue_weighting: tpo`: TPO weights the reference by the "
                "reference's own clean/noised logits, which the cache does not hold. Remove `ue_precompute_ref`."
            )
        if pref_loss != "sigmoid":
            raise ValueError(
                f"`pref_loss: {pref_loss}` is not supported with `stage: ue_dpo`, which weights DPO's sigmoid loss; "
                "remove `pref_loss` or set `pref_loss: sigmoid`."
            )
        if ld_alpha is not None:
            raise ValueError("`ld_alpha` (LD-DPO) is not supported with `stage: ue_dpo`; remove it.")
