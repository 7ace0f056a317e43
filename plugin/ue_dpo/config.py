"""The `ue_*` keys of `stage: ue_dpo`, with defaults, help text and validation."""

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal

from ue_dpo.argument_checks import UEDPOUserError, check_integer
from ue_dpo.methods import DEFAULT_METHOD, METHODS, key_groups, method_class, preference_method, readers

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


def _readers_text(names: list[str]) -> str:
    """`ue_weighting: ue` or `tpo`"""
    return f"`ue_weighting: {names[0]}`" + "".join(f" or `{name}`" for name in names[1:])


@dataclass
class _StageArguments:
    """The keys every method reads; the methods' own keys are added from their key groups below."""

    ue_weighting: Literal[tuple(METHODS)] = field(  # type: ignore[valid-type]
        default=DEFAULT_METHOD,
        metadata={
            "help": "The preference method: "
            + "; ".join(f"{name} ({method.summary})" for name, method in METHODS.items())
            + ". Keys a method does not read are refused with it."
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
            "help": "Compute each pair as one packed row, [prompt | chosen | rejected], whose attention mask keeps "
            "the rejected response from seeing the chosen one, so that the prompt and image are computed once per "
            "pass (equal to the unshared computation). Turns itself off, with a log line, where it cannot apply: "
            "another attn_implementation than sdpa or eager, or a batch whose pairs' prompts differ."
        },
    )
    ue_difficulty: int | None = field(
        default=None,
        metadata={
            "help": "Train on the rows of one difficulty level only: the rows whose `difficulty` column (registered "
            "in the dataset's dataset_info.json `columns`, an integer >= 0 per row) equals this value; the others are "
            "dropped before training, with a log line of how many were kept. `ue-dpo run`'s `stages:` sets it, one "
            "level per stage (MFPO's easy-to-hard schedule). Default: every row, the column unread."
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
    def method(self):
        """The preference method `ue_weighting` names (`ue_dpo.methods`)."""
        return preference_method(self)

    def resolve_ue_defaults(self) -> None:
        """Fill the keys left unset (None, so that an explicit value can be told from the default)."""
        for group in key_groups():
            for name, default in group.defaults.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)

    def validate_ue_dpo(self, *, pref_loss: str, ld_alpha: float | None, label_smoothing: float = 0.0) -> None:
        """Refuse keys the chosen method would ignore, resolve the defaults, then check the values."""
        method = method_class(self.ue_weighting)
        for group in key_groups():
            if group in method.key_groups:
                continue
            for name in group.defaults:
                if getattr(self, name) is not None:
                    raise UEDPOUserError(
                        group.refusal.format(
                            key=name,
                            value=getattr(self, name),
                            method=method.name,
                            readers=_readers_text(readers(group)),
                        )
                    )
        for name, reason in method.unread_keys(self).items():
            if getattr(self, name) is not None:
                raise UEDPOUserError(f"`{name}: {getattr(self, name)}` has no effect: {reason}. Remove `{name}`.")
        if self.ue_ref_cache_dir is not None and self.ue_precompute_ref is not True:
            raise UEDPOUserError(
                "`ue_ref_cache_dir` is the folder of the `ue_precompute_ref` cache, which is off; remove "
                "`ue_ref_cache_dir` or set `ue_precompute_ref: true`."
            )
        self.resolve_ue_defaults()
        for group in method.key_groups:
            group.check(self)
        for name in ("ue_token_chunk_size", "ue_vocab_chunk_size"):
            check_integer(name, getattr(self, name), "a positive integer")
            if getattr(self, name) < 1:
                raise UEDPOUserError(f"`{name}: {getattr(self, name)}` must be a positive integer.")
        if self.ue_difficulty is not None:
            check_integer("ue_difficulty", self.ue_difficulty, "an integer >= 0 (a level of the `difficulty` column)")
            if self.ue_difficulty < 0:
                raise UEDPOUserError(
                    f"`ue_difficulty: {self.ue_difficulty}` must be an integer >= 0 (a level of the `difficulty` "
                    "column)."
                )
        for name in ("ue_precompute_ref", "ue_prefix_sharing"):
            if not isinstance(getattr(self, name), bool):
                raise UEDPOUserError(f"`{name}: {getattr(self, name)!r}` must be true or false.")
        if self.ue_precompute_ref and method.precomputed_reference_refusal:
            raise UEDPOUserError(
                f"`ue_precompute_ref` cannot be used with `ue_weighting: {method.name}`: "
                f"{method.precomputed_reference_refusal} Remove `ue_precompute_ref`."
            )
        if label_smoothing and method.label_smoothing_refusal:
            raise UEDPOUserError(
                f"`dpo_label_smoothing: {label_smoothing}` cannot be used with `ue_weighting: {method.name}`: "
                f"{method.label_smoothing_refusal} Remove `dpo_label_smoothing`."
            )
        if pref_loss != "sigmoid":
            raise UEDPOUserError(
                f"`pref_loss: {pref_loss}` is not supported with `stage: ue_dpo`, which weights DPO's sigmoid loss; "
                "remove `pref_loss` or set `pref_loss: sigmoid`."
            )
        if ld_alpha is not None:
            raise UEDPOUserError("`ld_alpha` (LD-DPO) is not supported with `stage: ue_dpo`; remove it.")


# Mixed into LLaMA-Factory's FinetuningArguments; validated only when `stage: ue_dpo`. A method key is None until
# resolved, so that an explicit value can be told from the default.
UEDPOArguments = make_dataclass(
    "UEDPOArguments",
    [
        (key.name, key.type, field(default=None, metadata={"help": key.help}))
        for group in key_groups()
        for key in group.keys
    ],
    bases=(_StageArguments,),
)
UEDPOArguments.__module__ = __name__


def check_router_loss_coefficient(moe_aux_loss_coef: float | None) -> None:
    """Refuse LLaMA-Factory's `moe_aux_loss_coef` (a model key): its DPO trainer never adds a router loss (it reads
    only the logits of its forwards, and bypasses TRL's `aux_loss_enabled`), so `stage: dpo` trains the same loss
    with it or without it, and so would `stage: ue_dpo`."""
    if moe_aux_loss_coef:
        raise UEDPOUserError(
            f"`moe_aux_loss_coef: {moe_aux_loss_coef}` is not supported with `stage: ue_dpo`: LLaMA-Factory's "
            "`stage: dpo` adds no router auxiliary loss to the DPO loss (the key only makes some mixture-of-experts "
            "models record their router logits), and neither does `stage: ue_dpo`, so it would change nothing. "
            "Remove `moe_aux_loss_coef`."
        )


def check_llamafactory_keys(finetuning_args, llamafactory_defaults: dict[str, Any]) -> None:
    """Refuse the LLaMA-Factory keys that its DPO trainer reads and `stage: ue_dpo` does not (they would be
    silently ignored), and adapters on the output layer, which the chunked projection reads as a plain Linear."""
    for name, meaning in UNSUPPORTED_LLAMAFACTORY_KEYS.items():
        value = getattr(finetuning_args, name)
        if value != llamafactory_defaults[name]:
            raise UEDPOUserError(
                f"`{name}: {value}` is not supported with `stage: ue_dpo`: {meaning}. Remove `{name}`."
            )
    adapter_layer = PEFT_LAYER_BY_FINETUNING_TYPE.get(finetuning_args.finetuning_type)
    if adapter_layer is None:  # full and freeze tuning leave the output layer a torch.nn.Linear
        return
    for name, peft_layer in (
        ("lora_target", adapter_layer),
        ("additional_target", "peft.utils.other.ModulesToSaveWrapper (modules_to_save)"),
    ):
        targets = getattr(finetuning_args, name) or []
        if any(target == OUTPUT_LAYER or target.endswith(f".{OUTPUT_LAYER}") for target in targets):
            raise UEDPOUserError(
                f"`{name}: {','.join(targets)}` would make peft wrap `{OUTPUT_LAYER}` in its {peft_layer}, but "
                f"`stage: ue_dpo` projects hidden states onto the vocabulary with the output layer's weight and "
                f"needs `{OUTPUT_LAYER}` to stay a plain torch.nn.Linear. Remove `{OUTPUT_LAYER}` from `{name}`"
                + (" (`lora_target: all` leaves it out)." if name == "lora_target" else ".")
            )
