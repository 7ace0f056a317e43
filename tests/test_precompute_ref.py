"""`ue_precompute_ref`: the same training as the live reference pass, from an on-disk cache keyed by the data."""

from pathlib import Path

import pytest
import torch

from llamafactory_runs import train_or_fail
from tiny_training_config import tiny_training_config
from ue_dpo.synthetic.shapes import write_preference_dataset

pytestmark = pytest.mark.e2e


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("reference_logps-*.pt"))


def test_precomputed_reference_trains_identically_and_its_cache_is_reused_until_the_data_changes(
    tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path
):
    cache_dir = tmp_path / "cache"

    def run(name, dataset_dir=shapes_dataset_dir, **overrides):
        cache = {"ue_ref_cache_dir": str(cache_dir)} if overrides.get("ue_precompute_ref") else {}
        config = tiny_training_config(
            "qwen2_vl", tiny_qwen2_vl_dir, dataset_dir, tmp_path / name, **{"max_steps": 2, **cache, **overrides}
        )
        return train_or_fail(config, tmp_path / f"{name}-work")

    live = run("live")
    precomputed = run("precomputed", ue_precompute_ref=True)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "ue/lambda_chosen_mean"):
        assert [entry[key] for entry in precomputed] == pytest.approx(
            [entry[key] for entry in live], rel=1e-5, abs=1e-6
        ), key
    (cache,) = cache_files(cache_dir)
    rows = torch.load(cache, map_location="cpu")["rows"]
    assert len(rows) == 16  # 8 pairs: a chosen and a rejected row each
    assert all(values.ndim == 1 and values.numel() > 0 and (values < 0).all() for values in rows.values())

    # A second run reads the cache instead of recomputing it: shifting every cached log-prob by +1 shifts the
    # rewards (β Σ (log πθ - log π_ref)) while the policy's own log-probs stay those of the first run.
    saved = torch.load(cache, map_location="cpu")
    saved["rows"] = {digest: values + 1.0 for digest, values in saved["rows"].items()}
    torch.save(saved, cache)
    reused = run("reused", ue_precompute_ref=True, max_steps=1)
    assert cache_files(cache_dir) == [cache]
    assert reused[0]["logps/chosen"] == pytest.approx(precomputed[0]["logps/chosen"], rel=1e-6)
    assert reused[0]["rewards/chosen"] < precomputed[0]["rewards/chosen"] - 0.1  # β = 0.1, several tokens

    other_data = tmp_path / "other_shapes"
    write_preference_dataset(other_data, n_pairs=8, seed=1)
    run("other-data", dataset_dir=other_data, ue_precompute_ref=True, max_steps=1)
    assert len(cache_files(cache_dir)) == 2
