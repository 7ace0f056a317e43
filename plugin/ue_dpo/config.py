"""The `ue_*` keys of `stage: ue_dpo`, with defaults, help text and validation."""

from dataclasses import dataclass, field
from typing import Any, Literal

NOISE_SPACES = ("pixel_values", "image")
NOISE_SCHEDULES = ("sigmoid", "linear")
STAT_SCOPES = ("sequence", "batch")
WEIGHT_TARGETS = ("policy", "logratio")
BRANCHES = ("both", "chosen", "rejected")
WEIGHTINGS = ("ue", "tpo", "ddpo", "uniform")
DEFAULT_DDPO_GAMMA = 3.0  # RLAIF-V's `dpo_token_weight` default
# config.json `model_type` -> the LLaMA-Factory template the stage trains it with (training, evaluation, inspect)
TEMPLATE_BY_MODEL_TYPE = {"llava": "llava", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl"}


# the keys that only `ue_weighting: ue` reads, and their defaults (None in the dataclass until resolved)
UE_WEIGHTING_ONLY_DEFAULTS = {
    "ue_alpha": 0.3, "ue_tau": 0.4, "ue_stat_scope": "sequence", "ue_weight_target": "policy", "ue_branches": "both",
}
# the keys of v', read by the weightings that run a pass on it (ue, tpo), and their defaults (likewise None until
# resolved); `ue_seed` stays None unless set, meaning the training `seed`
NOISE_DEFAULTS = {"ue_noise_step": 500, "ue_noise_schedule": "sigmoid", "ue_noise_space": "pixel_values"}
NOISE_KEYS = (*NOISE_DEFAULTS, "ue_seed")
NOISED_IMAGE_WEIGHTINGS = ("ue", "tpo")
# LLaMA-Factory keys its DPO trainer reads and `stage: ue_dpo` does not, with what they do there
UNSUPPORTED_LLAMAFACTORY_KEYS = {
    "pref_bco_weight": "LLaMA-Factory's `stage: dpo` mixes a BCO loss in with this weight, UE-DPO weights DPO's "
    "sigmoid loss only",
    "simpo_gamma": "it is the margin of `pref_loss: simpo` (`stage: dpo`)",
    "kto_chosen_weight": "it weights the loss of `stage: kto`",
    "kto_rejected_weight": "it weights the loss of `stage: kto`",
}
OUTPUT_LAYER = "lm_head"
# the peft layer that LLaMA-Factory's `lora_target` puts around a module, per `finetuning_type` (OFT reads it too)
PEFT_LAYER_BY_FINETUNING_TYPE = {"lora": "peft.tuners.lora.layer.Linear", "oft": "peft.tuners.oft.layer.Linear"}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}: {value}` is not supported; use one of: {', '.join(allowed)}.")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}: {value!r}` must be a number.")


def _integer(name: str, value: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}: {value!r}` must be {expected}, not a {type(value).__name__}.")


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
            "ue_weight_target and ue_branches keys apply to ue only (refused with the others); the ue_noise_* "
            "keys to ue and tpo."
        },
    )
    ddpo_gamma: float | None = field(
        default=None,
        metadata={
            "help": "γ > 0 of `ue_weighting: ddpo`: the weight of differing tokens (default 3.0 as in RLAIF-V; the "
            "RLHF-V paper uses 5; 1 is plain DPO)."
        },
    )
    ue_alpha: float | None = field(
        default=None,
        metadata={
            "help": "UE-DPO weight strength α in [0, 1): λ_w ∈ [1, 1+α], λ_l ∈ [1-α, 1]. 0 gives plain DPO. "
            "Default 0.3."
        },
    )
    ue_tau: float | None = field(
        default=None,
        metadata={
            "help": "Quantile τ in (0, 0.5]: chosen tokens with Δ below the τ-quantile and rejected tokens with Δ "
            "at or above the (1-τ)-quantile are selected for re-weighting. Default 0.4."
        },
    )
    ue_noise_step: int | None = field(
        default=None,
        metadata={"help": "Diffusion step k in [0, 999] of the counterfactual image v' (default 500: sqrt(abar) ≈ "
                  "0.863)."},
    )
    ue_noise_schedule: Literal["sigmoid", "linear"] | None = field(
        default=None,
        metadata={"help": "Beta schedule: sigmoid (VCD/TPO, 1e-5..5e-3, in float32 as they compute it; the default) "
                  "or linear (DDPM, 1e-4..0.02)."},
    )
    ue_noise_space: Literal["pixel_values", "image"] | None = field(
        default=None,
        metadata={
            "help": "Where the noise is added: pixel_values (the default; VCD: the processor's normalised tensor, one ε per image "
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
    ue_stat_scope: Literal["sequence", "batch"] | None = field(
        default=None,
        metadata={
            "help": "Over which tokens the quantile q and the mean/std of u are taken: each response (sequence, "
            "the default) or, separately for chosen and for rejected responses, all response tokens of image "
            "samples in the current micro-batch of every rank, gathered across ranks (batch; not across "
            "gradient-accumulation steps)."
        },
    )
    ue_weight_target: Literal["policy", "logratio"] | None = field(
        default=None,
        metadata={
            "help": "λ multiplies log πθ (policy, the default, as the paper) or the log-ratio log πθ - log π_ref "
            "(logratio)."
        },
    )
    ue_branches: Literal["both", "chosen", "rejected"] | None = field(
        default=None,
        metadata={
            "help": "Which responses get λ: both (the default), chosen only (the paper's 'w/o dispref.') or "
            "rejected only ('w/o pref.'); the other keeps λ = 1."
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
    ue_prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Compute each pair as one packed row, [prompt | chosen | rejected], whose attention mask keeps the "
            "rejected response from seeing the chosen one, so that the prompt and image are computed once per pass "
            "(equal to the unshared computation). Turns itself off, with a log line, where it cannot apply: "
            "another attn_implementation than sdpa or eager, or a batch whose pairs' prompts differ."
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

    def resolve_ue_defaults(self) -> None:
        """Fill the keys left unset (None, so that an explicit value can be told from the default)."""
        for name, default in {**UE_WEIGHTING_ONLY_DEFAULTS, **NOISE_DEFAULTS, "ddpo_gamma": DEFAULT_DDPO_GAMMA}.items():
            if getattr(self, name) is None:
                setattr(self, name, default)

    def validate_ue_dpo(self, *, pref_loss: str, ld_alpha: float | None) -> None:
        """Refuse keys the chosen `ue_weighting` would ignore, resolve the defaults, then check the values."""
        _choice("ue_weighting", self.ue_weighting, WEIGHTINGS)
        if self.ue_weighting != "ue":
            for name in UE_WEIGHTING_ONLY_DEFAULTS:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"`{name}: {getattr(self, name)}` applies to `ue_weighting: ue` only, but `ue_weighting: "
                        f"{self.ue_weighting}` ignores it; remove `{name}` or use `ue_weighting: ue`."
                    )
        if self.ue_weighting not in NOISED_IMAGE_WEIGHTINGS:
            for name in NOISE_KEYS:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"`{name}: {getattr(self, name)}` sets the noised image v', which `ue_weighting: "
                        f"{self.ue_weighting}` does not use; remove `{name}` or use `ue_weighting: ue` or `tpo`."
                    )
        if self.ue_weighting != "ddpo" and self.ddpo_gamma is not None:
            raise ValueError(
                f"`ddpo_gamma` applies to `ue_weighting: ddpo` only, but `ue_weighting: {self.ue_weighting}`; "
                "remove `ddpo_gamma` or set `ue_weighting: ddpo`."
            )
        if self.ue_ref_cache_dir is not None and self.ue_precompute_ref is not True:
            raise ValueError(
                "`ue_ref_cache_dir` is the folder of the `ue_precompute_ref` cache, which is off; remove "
                "`ue_ref_cache_dir` or set `ue_precompute_ref: true`."
            )
        self.resolve_ue_defaults()
        _number("ue_alpha", self.ue_alpha)
        if not 0.0 <= self.ue_alpha < 1.0:
            raise ValueError(
                f"`ue_alpha: {self.ue_alpha}` is out of range; UE-DPO needs 0 <= ue_alpha < 1 "
                "(λ_l = 1 - α·σ(·) must stay positive). The paper uses 0.15-0.3."
            )
        _number("ue_tau", self.ue_tau)
        if not 0.0 < self.ue_tau <= 0.5:
            raise ValueError(f"`ue_tau: {self.ue_tau}` is out of range; use 0 < ue_tau <= 0.5 (default 0.4).")
        _integer("ue_noise_step", self.ue_noise_step, "an integer in [0, 999]")
        if not 0 <= self.ue_noise_step <= 999:
            raise ValueError(f"`ue_noise_step: {self.ue_noise_step}` is out of range; use an integer in [0, 999].")
        if self.ue_seed is not None:
            _integer("ue_seed", self.ue_seed, "an integer, or leave it out to use the training `seed`")
        _choice("ue_noise_schedule", self.ue_noise_schedule, NOISE_SCHEDULES)
        _choice("ue_noise_space", self.ue_noise_space, NOISE_SPACES)
        _choice("ue_stat_scope", self.ue_stat_scope, STAT_SCOPES)
        _choice("ue_weight_target", self.ue_weight_target, WEIGHT_TARGETS)
        _choice("ue_branches", self.ue_branches, BRANCHES)
        for name in ("ue_token_chunk_size", "ue_vocab_chunk_size"):
            _integer(name, getattr(self, name), "a positive integer")
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}: {getattr(self, name)}` must be a positive integer.")
        for name in ("ue_precompute_ref", "ue_prefix_sharing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}: {getattr(self, name)!r}` must be true or false.")
        _number("ddpo_gamma", self.ddpo_gamma)
        if not self.ddpo_gamma > 0:
            raise ValueError(f"`ddpo_gamma: {self.ddpo_gamma}` must be positive (default {DEFAULT_DDPO_GAMMA}).")
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


def check_llamafactory_keys(finetuning_args, llamafactory_defaults: dict[str, Any]) -> None:
    """Refuse the LLaMA-Factory keys that its DPO trainer reads and `stage: ue_dpo` does not (they would be
    silently ignored), and adapters on the output layer, which the chunked projection reads as a plain Linear."""
    for name, meaning in UNSUPPORTED_LLAMAFACTORY_KEYS.items():
        value = getattr(finetuning_args, name)
        if value != llamafactory_defaults[name]:
            raise ValueError(f"`{name}: {value}` is not supported with `stage: ue_dpo`: {meaning}. Remove `{name}`.")
    adapter_layer = PEFT_LAYER_BY_FINETUNING_TYPE.get(finetuning_args.finetuning_type)
    if adapter_layer is None:  # full and freeze tuning leave the output layer a torch.nn.Linear
        return
    for name, peft_layer in (("lora_target", adapter_layer),
                             ("additional_target", "peft.utils.other.ModulesToSaveWrapper (modules_to_save)")):
        targets = getattr(finetuning_args, name) or []
        if any(target == OUTPUT_LAYER or target.endswith(f".{OUTPUT_LAYER}") for target in targets):
            raise ValueError(
                f"`{name}: {','.join(targets)}` would make peft wrap `{OUTPUT_LAYER}` in its {peft_layer}, but "
                f"`stage: ue_dpo` projects hidden states onto the vocabulary with the output layer's weight and "
                f"needs `{OUTPUT_LAYER}` to stay a plain torch.nn.Linear. Remove `{OUTPUT_LAYER}` from `{name}`"
                + (" (`lora_target: all` leaves it out)." if name == "lora_target" else ".")
            )
