"""Registers `stage: ue_dpo` with LLaMA-Factory 0.9.5, which has no plugin mechanism for stages.

Two things are patched, both read at call time by LLaMA-Factory:
- the FinetuningArguments class in `llamafactory.hparams.parser`'s argument lists, replaced by a
  subclass that accepts `stage: ue_dpo` and the `ue_*` keys (it turns the stage into `dpo`
  plus the `ue_dpo_stage` flag, so every DPO code path in LLaMA-Factory applies);
- `llamafactory.train.tuner.run_dpo`, which routes flagged runs to our workflow.
`ue_dpo/_autoload.py` applies this when `llamafactory.train.tuner` is imported. It also makes our user errors
(UEDPOUserError: a bad key, a bad row) that end the process print alone, without LLaMA-Factory's traceback, unless
UE_DPO_TRACEBACK=1.
"""

import os
import sys
import typing
from dataclasses import dataclass, field, fields

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.config import UEDPOArguments, check_llamafactory_keys
from ue_dpo.versions import check_supported

_PARSER_ARGUMENT_LISTS = ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS")
TRACEBACK_ENV = "UE_DPO_TRACEBACK"
_applied = False


def _print_user_errors_alone(previous_hook):
    """A `sys.excepthook`: a UEDPOUserError that ends the process is its message and how to see the traceback;
    anything else (a bug) goes to `previous_hook` with its traceback. Python then exits with status 1."""

    def excepthook(kind, error, traceback):
        if isinstance(error, UEDPOUserError) and os.environ.get(TRACEBACK_ENV, "0").lower() not in ("1", "true", "y"):
            print(
                f"ue-dpo (stage: ue_dpo): error: {error}\n({TRACEBACK_ENV}=1 shows the traceback)",
                file=sys.stderr,
                flush=True,
            )
            return
        previous_hook(kind, error, traceback)

    excepthook.ue_dpo = True
    return excepthook


def _ue_finetuning_arguments(base: type) -> type:
    stages = typing.get_args(base.__dataclass_fields__["stage"].type) + ("ue_dpo",)
    defaults = {f.name: f.default for f in fields(UEDPOArguments) if f.init}
    llamafactory_defaults = {f.name: f.default for f in fields(base)}

    @dataclass
    class UEDPOFinetuningArguments(base, UEDPOArguments):
        stage: typing.Literal[stages] = field(  # type: ignore[valid-type]
            default="sft",
            metadata={"help": "Which stage will be performed in training; ue_dpo is UE-DPO (ue-dpo package)."},
        )

        def __post_init__(self):
            if self.stage == "ue_dpo":
                if os.environ.get("USE_MCA", "0").lower() in ("1", "true", "y"):
                    raise UEDPOUserError("`stage: ue_dpo` does not support USE_MCA (mcore adapter); unset USE_MCA.")
                self.validate_ue_dpo(
                    pref_loss=self.pref_loss, ld_alpha=self.ld_alpha, label_smoothing=self.dpo_label_smoothing
                )
                self.stage, self.ue_dpo_stage = "dpo", True
            else:
                changed = sorted(name for name, default in defaults.items() if getattr(self, name) != default)
                if changed:
                    raise UEDPOUserError(
                        f"{', '.join(f'`{name}`' for name in changed)} apply only to "
                        f"`stage: ue_dpo`, which `stage: {self.stage}` ignores; remove them or "
                        "set `stage: ue_dpo`."
                    )
                self.resolve_ue_defaults()
            super().__post_init__()
            if self.ue_dpo_stage:  # after LLaMA-Factory split the comma-separated target lists
                check_llamafactory_keys(self, llamafactory_defaults)

    UEDPOFinetuningArguments.__qualname__ = UEDPOFinetuningArguments.__name__
    return UEDPOFinetuningArguments


def apply() -> None:
    """Make `stage: ue_dpo` available to LLaMA-Factory in this process. Idempotent."""
    global _applied
    if _applied:
        return
    check_supported()
    from llamafactory.hparams import parser
    from llamafactory.hparams.finetuning_args import FinetuningArguments
    from llamafactory.train import tuner

    extended = _ue_finetuning_arguments(FinetuningArguments)
    for list_name in _PARSER_ARGUMENT_LISTS:
        argument_classes = getattr(parser, list_name)
        argument_classes[:] = [extended if cls is FinetuningArguments else cls for cls in argument_classes]

    stock_run_dpo = tuner.run_dpo

    def run_dpo(model_args, data_args, training_args, finetuning_args, callbacks=None):
        if getattr(finetuning_args, "ue_dpo_stage", False):
            # the workflow loads LLaMA-Factory's model and data code, which other stages' runs need not import
            from ue_dpo.llamafactory.workflow import run_ue_dpo

            return run_ue_dpo(model_args, data_args, training_args, finetuning_args, callbacks)
        return stock_run_dpo(model_args, data_args, training_args, finetuning_args, callbacks)

    tuner.run_dpo = run_dpo
    if not getattr(sys.excepthook, "ue_dpo", False):
        sys.excepthook = _print_user_errors_alone(sys.excepthook)
    _applied = True
