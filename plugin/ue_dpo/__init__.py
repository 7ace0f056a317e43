"""UE-DPO: Uncertainty-aware Exploratory DPO for multimodal LLMs, as a LLaMA-Factory stage.

Importing this package is cheap (no torch); the integrations load lazily.
"""

__version__ = "0.1.0"


def apply_llamafactory_integration() -> None:
    """Register `stage: ue_dpo` with LLaMA-Factory in this process (notebooks, tests)."""
    # here, not at the top: every import of any ue_dpo module runs this file, and it must stay free of LLaMA-Factory
    from ue_dpo.llamafactory.integration import apply

    apply()


__all__ = ["__version__", "apply_llamafactory_integration"]
