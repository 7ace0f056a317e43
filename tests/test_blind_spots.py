"""The blind-spot world: its scenes and data, and the README's two commands at a small size.

`ue-dpo run configs/experiments/embedded_blind_spots.yaml` runs here with its world, training configs and
evaluation, shrunk (few captions, pairs, steps and held-out images), with UE-DPO alone, two seeds, compared
with the warm-up; then
`ue-dpo inspect --word-group` on its warm-up. faint_recall and the word-group numbers are recomputed here from
lmms-eval's logged samples, the manifest and tokens.json.
"""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamafactory_runs import offline_env
from ue_dpo.core.weights import TYPE_I_BLIND_SPOT
from ue_dpo.synthetic.blind_spots import (
    FAINT_GREY,
    PARTNERS,
    PREFERENCE_DATASET,
    SFT_DATASET,
    draw_blind_spot_scene,
    faint_box,
    random_blind_spot_scene,
    write_blind_spot_preference_dataset,
    write_blind_spot_sft_dataset,
)
from ue_dpo.synthetic.shapes import BACKGROUND, EVAL_MANIFEST, mentioned_shapes
from ue_dpo.synthetic.vocabulary import FAINT_SHAPE_WORDS

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "configs" / "experiments" / "embedded_blind_spots.yaml"
UE_DPO = Path(sys.executable).with_name("ue-dpo")
SEEDS = [0, 1]
METHODS = ("ue_dpo",)
SMALL = {"sft_examples": 32, "preference_pairs": 8, "eval_images": 8}


def test_scenes_hold_distinct_shapes_and_a_faint_one_drawn_faintly():
    rng = random.Random(0)
    scenes = [random_blind_spot_scene(rng, partner_share=0.0) for _ in range(200)]
    assert all(len(set(scene.shapes)) == len(scene.shapes) for scene in scenes)
    with_faint = [scene for scene in scenes if scene.faint]
    assert 0.6 < len(with_faint) / len(scenes) < 0.9
    scene = with_faint[0]
    image = draw_blind_spot_scene(scene, 56)
    left, top, right, bottom = faint_box(scene.faint[0].quadrant, 56)
    assert image.getpixel(((left + right) // 2, (top + bottom) // 2)) == (FAINT_GREY,) * 3
    assert image.getpixel((left - 1, top - 1)) == BACKGROUND
    assert scene.caption().endswith(f"and a small grey {scene.faint[0].shape}.")
    assert re.search(FAINT_SHAPE_WORDS, scene.caption()).group() == scene.faint[0].shape


def test_the_warm_up_data_carries_the_prior_and_the_pairs_contrast_the_faint_shape(tmp_path):
    write_blind_spot_sft_dataset(tmp_path, n_examples=400, noisy_share=0.3)
    write_blind_spot_preference_dataset(tmp_path, n_pairs=40)
    captions = [
        record["messages"][1]["content"] for record in json.loads((tmp_path / f"{SFT_DATASET}.json").read_text())
    ]
    pairs_of_shapes = [mentioned_shapes(text) for text in captions if "small grey" not in text]
    two = [shapes for shapes in pairs_of_shapes if len(shapes) == 2]
    assert sum(PARTNERS[first] == second for first, second in two) / len(two) > 0.8
    assert sum("small grey" in text for text in captions) / len(captions) < 0.4
    for pair in json.loads((tmp_path / f"{PREFERENCE_DATASET}.json").read_text()):
        chosen, rejected = pair["chosen"]["content"], pair["rejected"]["content"]
        faint = re.search(FAINT_SHAPE_WORDS, chosen).group()
        assert faint not in mentioned_shapes(rejected)
        guessed = set(mentioned_shapes(rejected)) - set(mentioned_shapes(chosen))
        assert guessed <= {PARTNERS[mentioned_shapes(chosen)[0]]}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The experiment file with one method, two seeds and small sizes, run by `ue-dpo run`."""
    root = tmp_path_factory.mktemp("blind_spots")
    raw = yaml.safe_load(EXPERIMENT.read_text())
    raw["output"] = str(root / "out")
    raw["seeds"] = SEEDS
    raw["baseline"] = "warmup"
    raw["synthetic"].update(SMALL)
    raw["runs"] = [run for run in raw["runs"] if run["name"] in ("warmup", *METHODS)]
    for run in raw["runs"]:
        run["train"] = str(EXPERIMENT.parent / run["train"])
        run["overrides"]["max_steps"] = 2
    raw["evaluation"]["gen_kwargs"]["max_new_tokens"] = 24
    experiment = root / "small.yaml"
    experiment.write_text(yaml.safe_dump(raw, sort_keys=False))
    completed = subprocess.run(
        [str(UE_DPO), "run", str(experiment)], env=offline_env(), capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    return root / "out", completed.stdout


def _logged_samples(out: Path, instance: str) -> list[dict]:
    (path,) = (out / "evals" / instance).glob("shapes_blind_spots/*/*_samples_shapes_blind_spots.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.e2e
def test_the_small_run_reports_faint_recall_as_the_manifest_and_responses_give_it(small_run):
    out, stdout = small_run
    assert "synthetic blind_spots world: tiny qwen2_vl model" in stdout
    manifest = json.loads((out / "synthetic" / "eval" / EVAL_MANIFEST).read_text())
    assert len(manifest) == SMALL["eval_images"] and any(entry["faint"] for entry in manifest)
    results = json.loads((out / "results.json").read_text())
    runs = {run["name"]: run for run in results["runs"]}
    checked = 0
    for name in METHODS:
        assert [model["seed"] for model in runs[name]["per_seed"]] == SEEDS
        for model in runs[name]["per_seed"]:
            samples = _logged_samples(out, f"{name}@seed{model['seed']}")
            faint = [set(manifest[sample["doc_id"]]["faint"]) for sample in samples]
            named = [set(mentioned_shapes(sample["filtered_resps"])) for sample in samples]
            expected = sum(len(shapes & said) for shapes, said in zip(faint, named)) / sum(map(len, faint)) * 100
            assert model["metrics"]["shapes_blind_spots"]["faint_recall"] == pytest.approx(expected)
            checked += 1
        seeds = [model["metrics"]["shapes_blind_spots"]["faint_recall"] for model in runs[name]["per_seed"]]
        assert runs[name]["metrics"]["shapes_blind_spots"]["faint_recall"] == pytest.approx(sum(seeds) / len(seeds))
    assert checked == len(METHODS) * len(SEEDS)
    assert "faint_recall" in results["comparison"]["runs"]["ue_dpo"]["tasks"]["shapes_blind_spots"]
    assert "faint_recall Δ vs baseline" in (out / "results.md").read_text()


@pytest.mark.e2e
def test_inspect_counts_type_i_tokens_on_faint_shape_words(small_run, tmp_path):
    out, _ = small_run
    inspected = tmp_path / "inspect"
    completed = subprocess.run(
        [
            str(UE_DPO),
            "inspect",
            "--model",
            str(out / "runs" / "warmup"),
            "--data",
            PREFERENCE_DATASET,
            "--dataset-dir",
            str(out / "synthetic" / "data"),
            "--n",
            str(SMALL["preference_pairs"]),
            "--word-group",
            f"faint={FAINT_SHAPE_WORDS}",
            "--out",
            str(inspected),
        ],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    group = json.loads((inspected / "summary.json").read_text())["word_groups"]["faint"]
    counts = {"inside": [0, 0], "outside": [0, 0]}
    for pair in json.loads((inspected / "tokens.json").read_text()):
        text, offsets = "", []
        for token in pair["chosen"]:
            offsets.append((len(text), len(text) + len(token["text"])))
            text += token["text"]
        spans = [match.span() for match in re.finditer(FAINT_SHAPE_WORDS, text)]
        assert len(spans) == 1  # every chosen caption names its one faint shape
        for token, (start, end) in zip(pair["chosen"], offsets):
            where = "inside" if any(start < high and end > low for low, high in spans) else "outside"
            counts[where][0] += 1
            counts[where][1] += token["category"] == TYPE_I_BLIND_SPOT
    assert counts["inside"][0] >= SMALL["preference_pairs"]
    for where, (tokens, type_i) in counts.items():
        assert (group[f"tokens_{where}"], group[f"type_i_{where}"]) == (tokens, type_i)
    if counts["inside"][1] and counts["outside"][1]:
        ratio = (counts["inside"][1] / counts["inside"][0]) / (counts["outside"][1] / counts["outside"][0])
        assert group["type_i_rate_ratio"] == pytest.approx(ratio)
    assert "Type-I rate ratio inside / outside" in completed.stdout
