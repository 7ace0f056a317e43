"""Plain DPO through the stage's loss, data and logging: every token weighs 1 (equal to `stage: dpo`)."""

from ue_dpo.methods.base import PreferenceMethod, WeightedTokens


class Uniform(PreferenceMethod):
    name = "uniform"
    summary = "plain DPO, equal to `stage: dpo`"

    def weigh(self, step) -> WeightedTokens:
        return self.unweighted(step)
