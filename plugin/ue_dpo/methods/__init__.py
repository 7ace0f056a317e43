"""The preference methods of `stage: ue_dpo`, by the name `ue_weighting` gives them. Adding one: its module, and a
line here."""

from ue_dpo.argument_checks import check_choice
from ue_dpo.methods.base import KeyGroup, PreferenceMethod
from ue_dpo.methods.chip import CHiP
from ue_dpo.methods.ddpo import DDPO
from ue_dpo.methods.mdpo import MDPO, MFPO, MDPOWithUE
from ue_dpo.methods.tpo import TPO
from ue_dpo.methods.ue import UEDPO
from ue_dpo.methods.uniform import Uniform
from ue_dpo.methods.vdpo import VDPO

METHODS: dict[str, type[PreferenceMethod]] = {
    method.name: method for method in (UEDPO, TPO, DDPO, Uniform, MDPO, MFPO, VDPO, CHiP, MDPOWithUE)
}
DEFAULT_METHOD = UEDPO.name


def key_groups() -> list[KeyGroup]:
    """Every method's key groups, each once, in registry order."""
    groups = []
    for method in METHODS.values():
        groups.extend(group for group in method.key_groups if group not in groups)
    return groups


def readers(group: KeyGroup) -> list[str]:
    return [name for name, method in METHODS.items() if group in method.key_groups]


def method_class(name: str) -> type[PreferenceMethod]:
    check_choice("ue_weighting", name, tuple(METHODS))
    return METHODS[name]


def preference_method(args) -> PreferenceMethod:
    """The method `ue_weighting` names, over the stage's arguments (their defaults filled in)."""
    return method_class(args.ue_weighting)(args)
