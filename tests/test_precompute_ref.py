"""`ue_precompute_ref`: the same training as the live reference pass, from an on-disk cache keyed by the data."""

from pathlib import Path

import pytest
import torch

from llamafactory_runs import train_in_one_process
from tiny_training_config import tiny_training_config
from ue_dpo.synthetic.shapes import write_preference_dataset

pytestmark = pytest.mark.e2e


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("reference_logps-*.pt"))


def test_precomputed_reference_trains_identically_and_its_cache_is_reused_until_the_data_changes(
    tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path
):
    cache_dir = tmp_path / "cache"

    def config(name, dataset_dir=shapes_dataset_dir, **overrides):
        cache = {"ue_ref_cache_dir": str(cache_dir)} if overrides.get("ue_precompute_ref") else {}
        return tiny_training_config(
            "qwen2_vl", tiny_qwen2_vl_dir, dataset_dir, tmp_path / name, **{"max_steps": 2, **cache, **overrides}
        )

    def in_one_process(**configs):  # importing LLaMA-Factory is most of a tiny run
        return train_in_one_process({name: (config, tmp_path / f"{name}-work") for name, config in configs.items()})

    runs = in_one_process(live=config("live"), precomputed=config("precomputed", ue_precompute_ref=True))
    live, precomputed = runs["live"], runs["precomputed"]
    assert len(live) == 2
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "ue/lambda_chosen_mean"):
        assert [entry[key] for entry in precomputed] == pytest.approx(
            [entry[key] for entry in live], rel=1e-5, abs=1e-6
        ), key
    (cache,) = cache_files(cache_dir)
    rows = torch.load(cache, map_location="cpu")["rows"]
    assert len(rows) == 16  # 8 pairs: a chosen and a rejected row each
    assert all(values.ndim == 1 and values.numel() > 0 and (values < 0).all() for values in rows.values())

    # A second run reads the cache instead of recomputing it: shifting every cached log-prob by +1 shifts the
    # rewards (β Σ (log πθ - log π_ref)) while the policy's own log-probs stay those of the first run. A run on
    # other data, after it in the same process, writes a cache of its own beside it.
    saved = torch.load(cache, map_location="cpu")
    saved["rows"] = {digest: values + 1.0 for digest, values in saved["rows"].items()}
    torch.save(saved, cache)
    other_data = tmp_path / "other_shapes"
    write_preference_dataset(other_data, n_pairs=8, seed=1)
    runs = in_one_process(
        reused=config("reused", ue_precompute_ref=True, max_steps=1),
        other_data=config("other-data", dataset_dir=other_data, ue_precompute_ref=True, max_steps=1),
    )
    reused = runs["reused"]
    assert reused[0]["logps/chosen"] == pytest.approx(precomputed[0]["logps/chosen"], rel=1e-6)
    assert reused[0]["rewards/chosen"] < precomputed[0]["rewards/chosen"] - 0.1  # β = 0.1, several tokens
    # the shifted cache was read, not rewritten, and the other data's cache is the one new file
    files = cache_files(cache_dir)
    assert len(files) == 2 and cache in files
    kept = torch.load(cache, map_location="cpu")["rows"]
    assert kept.keys() == saved["rows"].keys()
    assert all(torch.equal(kept[digest], values) for digest, values in saved["rows"].items())
    assert runs["other_data"]
