"""Config lint: the paper's training recipes in configs/train/ and the DeepSpeed JSONs in configs/deepspeed/."""

import json
from pathlib import Path

import pytest
import yaml

from readme_training import readme_configs
from ue_dpo import recipes

REPO = Path(__file__).resolve().parents[1]
TRAIN_DIR = REPO / "configs" / "train"
DEEPSPEED_DIR = REPO / "configs" / "deepspeed"
TRAIN_CONFIGS = sorted(TRAIN_DIR.glob("*.yaml"))

# The paper's recipes, written out independently of ue_dpo.recipes.
PAPER_MODELS = {
    "llava15_7b": {"model_name_or_path": "llava-hf/llava-1.5-7b-hf", "template": "llava", "ue_alpha": 0.3},
    "llava15_13b": {"model_name_or_path": "llava-hf/llava-1.5-13b-hf", "template": "llava", "ue_alpha": 0.25},
    "qwen25vl_3b": {"model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "template": "qwen2_vl", "ue_alpha": 0.15},
    # not the paper's: our recipe for Qwen3-VL, with the paper's alpha of its Qwen backbone
    "qwen3vl_8b": {
        "model_name_or_path": "Qwen/Qwen3-VL-8B-Instruct",
        "template": "qwen3_vl_nothink",
        "ue_alpha": 0.15,
    },
}
# dataset name -> the conversion that writes it: RLHF-V all 5.7k pairs; RLAIF-V 16k pairs, which the paper does not
# name, so the first 16,000 source rows (our choice) are taken at conversion, not by LLaMA-Factory's `max_samples`
PAPER_DATASETS = {"rlhf_v": "ue-dpo data rlhf_v --out data", "rlaif_v": "ue-dpo data rlaif_v --out data --first 16000"}
PAPER_SHARED = {
    "pref_beta": 0.1,
    "pref_loss": "sigmoid",
    "finetuning_type": "lora",
    "lora_rank": 128,
    "lora_target": ["all"],
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "num_train_epochs": 2.0,
    "bf16": True,
}
METHOD_BRANCHES = {"ue_dpo": "both", "ue_dpo_chosen_only": "chosen", "ue_dpo_rejected_only": "rejected"}
# The peers' own settings: TPO's noise (alibaba/TPO: step 500 of the sigmoid schedule on the raw image) and
# RLAIF-V's default `dpo_token_weight` for DDPO.
PEER_KEYS = {
    "tpo": {"ue_weighting": "tpo", "ue_noise_step": 500, "ue_noise_schedule": "sigmoid", "ue_noise_space": "image"},
    "ddpo": {"ue_weighting": "ddpo", "ddpo_gamma": 3.0},
}
# The second-image peers, on LLaVA-1.5-7B and RLHF-V only: their sources' own keys (docs/peers.md), V-DPO's γ 2 ours
SECOND_IMAGE_PEER_KEYS = {
    "mdpo": {"ue_weighting": "mdpo"},
    "mfpo": {"ue_weighting": "mfpo"},
    "vdpo": {"ue_weighting": "vdpo", "vdpo_gamma": 2.0, "vdpo_guidance": "policy"},
    "chip": {"ue_weighting": "chip", "chip_alpha": 0.1},
}
ZERO_STAGE = {"llava15_7b": 2, "llava15_13b": 3, "qwen25vl_3b": 2, "qwen3vl_8b": 2}


def name_parts(file_name: str) -> tuple[str, str, str]:
    stem = file_name.removesuffix(".yaml")
    model = next(model for model in PAPER_MODELS if stem.startswith(model + "_"))
    dataset = next(dataset for dataset in PAPER_DATASETS if stem.startswith(f"{model}_{dataset}_"))
    return model, dataset, stem.removeprefix(f"{model}_{dataset}_")


def test_every_model_and_dataset_has_ue_dpo_dpo_and_the_peers_and_the_7b_has_both_ablations():
    names = {path.name for path in TRAIN_CONFIGS}
    for model in PAPER_MODELS:
        for dataset in PAPER_DATASETS:
            assert {f"{model}_{dataset}_{method}.yaml" for method in ("ue_dpo", "dpo", "tpo", "ddpo")} <= names
    for dataset in PAPER_DATASETS:
        assert {
            f"llava15_7b_{dataset}_ue_dpo_chosen_only.yaml",
            f"llava15_7b_{dataset}_ue_dpo_rejected_only.yaml",
        } <= names


def test_the_second_image_peers_have_recipes_on_the_papers_table_1_setting():
    names = {path.name for path in TRAIN_CONFIGS}
    assert {f"llava15_7b_rlhf_v_{method}.yaml" for method in SECOND_IMAGE_PEER_KEYS} <= names


def test_recipe_files_are_exactly_what_the_generator_writes(tmp_path):
    recipes.main([str(tmp_path)])
    generated = {path.name: path.read_text() for path in tmp_path.iterdir()}
    on_disk = {path.name: path.read_text() for path in TRAIN_CONFIGS}
    assert sorted(on_disk) == sorted(generated), "add new recipes to ue_dpo.recipes, then regenerate"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{name} was edited by hand; change ue_dpo/recipes.py and regenerate"


def test_recipes_differ_only_in_their_model_dataset_and_method_keys():
    model_keys = {"model_name_or_path", "template", "ue_alpha", "deepspeed"}
    dataset_keys = {"dataset", "max_samples"}
    configs = {path.name: yaml.safe_load(path.read_text()) for path in TRAIN_CONFIGS}

    def method_keys(config):
        return {"stage", "output_dir", "ddpo_gamma"} | {
            key for key in config if key.startswith(("ue_", "vdpo_", "chip_"))
        }

    def shared(config):
        return {
            key: value for key, value in config.items() if key not in model_keys | dataset_keys | method_keys(config)
        }

    reference = shared(configs["llava15_7b_rlhf_v_ue_dpo.yaml"])
    for name, config in configs.items():
        model, dataset, method = name_parts(name)
        assert shared(config) == reference, name
        same_model = configs[f"{model}_rlhf_v_ue_dpo.yaml"]
        assert {key: config.get(key) for key in model_keys - {"ue_alpha"}} == {
            key: same_model.get(key) for key in model_keys - {"ue_alpha"}
        }, name
        same_dataset = configs[f"llava15_7b_{dataset}_ue_dpo.yaml"]
        assert {key: config.get(key) for key in dataset_keys} == {key: same_dataset.get(key) for key in dataset_keys}
        assert config["output_dir"] == f"saves/{model}/{dataset}/{method}"


def test_recipes_name_the_conversion_of_their_data_and_rlaif_v_names_its_subset_as_our_choice():
    for path in TRAIN_CONFIGS:
        _, dataset, _ = name_parts(path.name)
        header = [line.removeprefix("# ") for line in path.read_text().splitlines() if line.startswith("#")]
        assert f"Run from the repository root after `{PAPER_DATASETS[dataset]}`:" in header, path.name
        choice = " ".join(header)
        if dataset == "rlaif_v":
            assert "without saying which 16k" in choice and "our choice, not the paper's" in choice, path.name
            assert "`--random 16000 --seed S`" in choice, path.name


@pytest.fixture(scope="module")
def parsed(llamafactory_parsed):
    """Every recipe through LLaMA-Factory's parser, run from a folder laid out like the repository root after
    `ue-dpo data rlhf_v|rlaif_v --out data` (here on tiny files in the public schemas); the parse is shared with
    test_docs.py's README YAML (conftest.py), whose configs are left out here."""
    results, root = llamafactory_parsed
    return {name: result for name, result in results.items() if name not in readme_configs()}, root


def test_recipes_parse_with_llamafactory_and_name_files_that_exist(parsed):
    results, root = parsed
    assert sorted(results) == [path.name for path in TRAIN_CONFIGS]
    for name, result in results.items():
        model, dataset, _ = name_parts(name)
        assert result["dataset_dir"] == "data"
        assert result["datasets"] == [
            {"name": f"{dataset}.json", "load_from": "file", "ranking": True, "exists": True}
        ], name
        assert (root / result["deepspeed"]).resolve().parent == DEEPSPEED_DIR
        assert result["zero_stage"] == ZERO_STAGE[model], name


def test_recipe_hyperparameters_are_the_papers(parsed):
    results, _ = parsed
    for name, result in results.items():
        model, dataset, method = name_parts(name)
        expected = {**PAPER_SHARED, **PAPER_MODELS[model], "dataset": [dataset], "max_samples": None}
        if method == "dpo":
            expected.update(stage="dpo", ue_dpo_stage=False)
            expected.pop("ue_alpha")
        elif method in PEER_KEYS:
            expected.update(stage="dpo", ue_dpo_stage=True, **PEER_KEYS[method])
            expected.pop("ue_alpha")
        elif method in SECOND_IMAGE_PEER_KEYS:
            assert (model, dataset) == ("llava15_7b", "rlhf_v"), name
            expected.update(stage="dpo", ue_dpo_stage=True, **SECOND_IMAGE_PEER_KEYS[method])
            expected.pop("ue_alpha")
        else:
            assert method in METHOD_BRANCHES, f"{name}: add the paper's values for method {method} to this test"
            expected.update(
                stage="dpo",
                ue_dpo_stage=True,
                ue_weighting="ue",
                ue_tau=0.4,
                ue_noise_step=500,
                ue_branches=METHOD_BRANCHES[method],
            )
        assert {key: result[key] for key in expected} == expected, name


def test_deepspeed_configs_are_valid_zero_configs_with_explicit_bucket_sizes():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import LlavaConfig, Qwen2_5_VLConfig

    # TRL sizes the reference model's ZeRO-3 buckets from these top-level attributes, which VLM configs lack
    for config_class in (LlavaConfig, Qwen2_5_VLConfig):
        assert not hasattr(config_class(), "hidden_size") and not hasattr(config_class(), "hidden_sizes")

    for stage in (2, 3):
        config = json.loads((DEEPSPEED_DIR / f"ds_z{stage}.json").read_text())
        zero = DeepSpeedZeroConfig(**config["zero_optimization"])  # refuses unknown keys
        assert zero.stage == stage
        assert config["bf16"] == {"enabled": "auto"} and config["fp16"]["enabled"] == "auto"
        assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
        assert not [key for key, value in config["zero_optimization"].items() if value == "auto"]
    z3 = json.loads((DEEPSPEED_DIR / "ds_z3.json").read_text())["zero_optimization"]
    # what transformers' "auto" would give for LLaVA-1.5-13B's text hidden size (5120): h², 0.9 h², 10 h
    assert (z3["reduce_bucket_size"], z3["stage3_prefetch_bucket_size"], z3["stage3_param_persistence_threshold"]) == (
        26_214_400,
        23_592_960,
        51_200,
    )
    assert z3["stage3_gather_16bit_weights_on_model_save"] is True


EXPERIMENTS_DIR = REPO / "configs" / "experiments"
# peers experiment -> the experiment it extends with the DDPO and TPO runs
PEER_EXPERIMENTS = {
    "embedded_peers.yaml": "embedded_default.yaml",
    "paper_llava15_7b_rlaif_v_peers.yaml": "paper_llava15_7b_rlaif_v.yaml",
}


def method_free(config: dict) -> dict:
    return {
        key: value
        for key, value in config.items()
        if key not in {"stage", "output_dir", "ddpo_gamma"} and not key.startswith("ue_")
    }


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_every_experiment_file_loads_and_names_training_configs_that_exist(path):
    from ue_dpo.experiment.config import load_experiment

    experiment = load_experiment(path)
    assert experiment.runs
    for run in experiment.runs:
        assert run.train is None or run.train.is_file(), f"{path.name}: run {run.name} names {run.train}"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("paper_*.yaml")), ids=lambda path: path.name)
def test_paper_experiments_spell_out_the_protocol_task_by_task_and_name_a_live_judge(path):
    from ue_dpo.experiment.config import load_experiment

    experiment = load_experiment(path)
    protocol_of = {task: protocol for protocol in experiment.evaluation.protocols for task in protocol.tasks}
    assert sorted(protocol_of) == ["amber", "mmhal_bench", "object_halbench"]
    beams = {task: protocol.gen_kwargs["num_beams"] for task, protocol in protocol_of.items()}
    assert beams == {"object_halbench": 3, "mmhal_bench": 1, "amber": 1}  # RLAIF-V's beams on Object-HalBench
    assert {protocol.gen_kwargs["max_new_tokens"] for protocol in protocol_of.values()} == {1024}
    assert experiment.judge.model and experiment.judge.model != "gpt-4-1106-preview"  # retired by OpenAI


@pytest.mark.parametrize("peers_name", sorted(PEER_EXPERIMENTS))
def test_peer_experiments_add_ddpo_and_tpo_runs_that_differ_from_dpo_only_in_the_method_keys(peers_name):
    from ue_dpo.experiment.config import load_experiment

    peers = load_experiment(EXPERIMENTS_DIR / peers_name)
    base = load_experiment(EXPERIMENTS_DIR / PEER_EXPERIMENTS[peers_name])
    # the same world, evaluation and output folder (so the base experiment's finished stages are reused)
    assert (peers.synthetic, peers.evaluation, peers.judge, peers.output) == (
        base.synthetic,
        base.evaluation,
        base.judge,
        base.output,
    )
    runs = {run.name: run for run in peers.runs}
    assert [run.name for run in peers.runs if run.name not in ("ddpo", "tpo")] == [run.name for run in base.runs]
    for run in base.runs:
        assert runs[run.name] == run
    assert (runs["ddpo"].label, runs["tpo"].label) == ("DDPO", "TPO")

    dpo = yaml.safe_load(runs["dpo"].train.read_text())
    assert dpo["stage"] == "dpo"
    for method, method_keys in PEER_KEYS.items():
        assert runs[method].overrides == runs["dpo"].overrides
        config = yaml.safe_load(runs[method].train.read_text())
        assert method_free(config) == method_free(dpo), f"{runs[method].train} differs from dpo beyond the method"
        method_part = {key: value for key, value in config.items() if key not in method_free(config)}
        method_part.pop("output_dir", None)  # the paper recipes name their own (the runner replaces it)
        assert method_part == {"stage": "ue_dpo", **method_keys}


def test_the_table_1_experiment_trains_every_method_from_recipes_that_differ_from_dpo_only_in_the_method_keys():
    from ue_dpo.experiment.config import load_experiment

    experiment = load_experiment(EXPERIMENTS_DIR / "paper_llava15_7b_rlhf_v_table1.yaml")
    runs = {run.name: run for run in experiment.runs}
    assert list(runs) == ["base", "dpo", "mdpo", "mfpo", "vdpo", "chip", "ddpo", "tpo", "ue_dpo"]
    assert runs["base"].train is None
    dpo = yaml.safe_load(runs["dpo"].train.read_text())
    for name, run in runs.items():
        if name == "base":
            continue
        assert run.train.name == f"llava15_7b_rlhf_v_{name}.yaml"
        config = yaml.safe_load(run.train.read_text())
        shared = {key: value for key, value in method_free(config).items() if not key.startswith(("vdpo_", "chip_"))}
        assert shared == method_free(dpo), name
