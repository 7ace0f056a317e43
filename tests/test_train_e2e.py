"""`llamafactory-cli train` with `stage: ue_dpo` on tiny local checkpoints of every family, dense and
mixture-of-experts."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamafactory_runs import run_train, train_in_one_process, train_or_fail, training_log
from tiny_training_config import tiny_training_config

UE_KEYS = {
    "ue/selected_share_chosen",
    "ue/selected_share_rejected",
    "ue/lambda_chosen_mean",
    "ue/lambda_rejected_mean",
    "ue/u_mean",
    "ue/delta_mean",
    "ue/imageless_pairs",
}
DPO_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"}

pytestmark = pytest.mark.e2e


def model_dir_for(arch, request) -> Path:
    return request.getfixturevalue(f"tiny_{arch}_dir")


def check_ue_metrics(log: list[dict], alpha: float = 0.3) -> None:
    assert log, "no training step was logged"
    for entry in log:
        assert UE_KEYS | DPO_KEYS <= entry.keys(), sorted(entry)
        assert 1.0 <= entry["ue/lambda_chosen_mean"] <= 1.0 + alpha
        assert 1.0 - alpha <= entry["ue/lambda_rejected_mean"] <= 1.0
        assert 0.0 < entry["ue/selected_share_chosen"] <= 0.5
        assert 0.0 < entry["ue/selected_share_rejected"] <= 0.7
        assert entry["ue/imageless_pairs"] == 0.0


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_lora_training_logs_ue_metrics_and_saves_the_adapter(arch, request, shapes_dataset_dir, tmp_path):
    if arch == "llava":  # through llamafactory-cli, as users run it (Qwen2-VL's CLI trainings: the torchrun tests)
        out = tmp_path / "out"
        log = train_or_fail(
            tiny_training_config(arch, model_dir_for(arch, request), shapes_dataset_dir, out, plot_loss=True), tmp_path
        )
    else:
        log, out = request.getfixturevalue("trained")[f"lora-{arch}"]
    check_ue_metrics(log)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "training_loss.png").exists()


# The tiled families, each with the LLaMA-Factory keys that make its images several entries of `pixel_values`
# (InternVL's crops and thumbnail), and the line its run logs about sharing prompts
TILED_FAMILIES = {
    "internvl": ({"crop_to_patches": True}, "each pair's prompt and image are computed once per pass"),
    "gemma3": ({}, "computing unshared rows, since Gemma 3 builds its own per-layer masks from `token_type_ids`"),
}


def tiled_family_config(arch, request, dataset_dir, output_dir, **overrides):
    keys, _ = TILED_FAMILIES[arch]
    return tiny_training_config(arch, model_dir_for(arch, request), dataset_dir, output_dir, **keys, **overrides)


FULL_FINETUNING = {"finetuning_type": "full", "freeze_vision_tower": True, "learning_rate": 1e-4}


@pytest.fixture(scope="module")
def trained(tiny_llava_dir, tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path_factory, request):
    """The trainings of the tests that check what a run logs and saves (the CLI's own start and messages are checked
    by the LLaVA LoRA test, the torchrun tests and the refusals): one after another in one Python process through
    LLaMA-Factory's `run_exp` (train_in_one_process), since importing LLaMA-Factory is most of a tiny run.
    -> {name: (training log, output_dir)}."""
    root = tmp_path_factory.mktemp("trained")
    model_dirs = {"llava": tiny_llava_dir, "qwen2_vl": tiny_qwen2_vl_dir}

    def config(name, arch, **overrides):
        return tiny_training_config(arch, model_dirs[arch], shapes_dataset_dir, root / name / "out", **overrides)

    resumed = config("resume", "llava", max_steps=2, save_strategy="steps", save_steps=1)
    configs = {
        "lora-qwen2_vl": config("lora-qwen2_vl", "qwen2_vl", plot_loss=True),
        **{
            f"full-{arch}": config(f"full-{arch}", arch, **FULL_FINETUNING, ue_weight_target="logratio")
            for arch in model_dirs
        },
        # stock DPO, then ue_dpo with alpha 0 and 0.3: the alpha-zero test
        "dpo": config("dpo", "qwen2_vl", max_steps=3, stage="dpo"),
        "alpha0": config("alpha0", "qwen2_vl", max_steps=3, ue_alpha=0.0),
        "alpha03": config("alpha03", "qwen2_vl", max_steps=3, ue_alpha=0.3),
        # two steps with a checkpoint each, then a third step resumed from checkpoint-2 in the same output_dir
        "resume-first": resumed,
        "resume-second": {
            **resumed,
            "max_steps": 3,
            "overwrite_output_dir": False,
            "resume_from_checkpoint": str(Path(resumed["output_dir"]) / "checkpoint-2"),
        },
        "image-noise": config(
            "image-noise",
            "qwen2_vl",
            ue_noise_space="image",
            ue_stat_scope="batch",
            ue_weight_target="logratio",
            ue_branches="chosen",
            pref_ftx=0.5,
        ),
        # stock DPO and ue_dpo with alpha 0 on each tiled family: the tiled families' alpha-zero test
        **{
            f"{name}-{arch}": tiled_family_config(
                arch, request, shapes_dataset_dir, root / f"{name}-{arch}" / "out", **overrides
            )
            for arch in TILED_FAMILIES
            for name, overrides in (("dpo", {"stage": "dpo"}), ("alpha0", {"ue_alpha": 0.0}))
        },
    }
    logs = train_in_one_process({name: (run, root / name / "work") for name, run in configs.items()}, timeout=1800)
    return {name: (logs[name], Path(run["output_dir"])) for name, run in configs.items()}


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_full_finetuning_uses_a_frozen_reference_copy(arch, trained):
    log, out = trained[f"full-{arch}"]
    check_ue_metrics(log)
    # step 1: the frozen copy equals the policy, so λ·(log πθ - log π_ref) is exactly 0
    assert log[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert log[1]["rewards/chosen"] != pytest.approx(0.0, abs=1e-6)
    assert (out / "model.safetensors").exists()


def test_alpha_zero_logs_the_same_loss_as_stage_dpo_and_default_alpha_differs(trained):
    stock, alpha0, weighted = ([entry["loss"] for entry in trained[name][0]] for name in ("dpo", "alpha0", "alpha03"))
    assert len(stock) == 3
    assert alpha0 == pytest.approx(stock, rel=1e-5, abs=1e-6)
    assert weighted[0] != pytest.approx(stock[0], rel=1e-4)


@pytest.mark.parametrize("arch", TILED_FAMILIES)
def test_tiled_family_trains_and_logs_ue_metrics(arch, request, shapes_dataset_dir, tmp_path):
    result = run_train(tiled_family_config(arch, request, shapes_dataset_dir, tmp_path / "out"), tmp_path)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    assert TILED_FAMILIES[arch][1] in result.stdout + result.stderr
    check_ue_metrics(training_log(tmp_path / "out"))


def test_tiled_families_at_alpha_zero_log_the_losses_of_stage_dpo(trained):
    for arch in TILED_FAMILIES:
        stock, alpha0 = ([entry["loss"] for entry in trained[f"{name}-{arch}"][0]] for name in ("dpo", "alpha0"))
        assert len(stock) == 2
        assert alpha0 == pytest.approx(stock, rel=1e-5, abs=1e-6), arch


NEW_FAMILIES = ("qwen3_vl", "qwen3_5", "glm4v", "qwen3_vl_moe", "qwen3_5_moe", "glm4v_moe")
RUN_OVERRIDES = {"ue": {}, "alpha0": {"ue_alpha": 0.0}, "dpo": {"stage": "dpo"}}
# GLM-4.5V's stock run sets LLaMA-Factory's router-loss coefficient, which makes its language model record the router
# logits; LLaMA-Factory's DPO adds no router loss, so α=0 without it (`stage: ue_dpo` refuses it) logs the same losses
STOCK_RUN_OVERRIDES = {"glm4v_moe": {"moe_aux_loss_coef": 0.001}}


def test_qwen3_vl_qwen3_5_and_glm4v_dense_and_moe_train_with_ue_metrics_and_alpha_zero_is_stage_dpo(
    request, shapes_dataset_dir, tmp_path
):
    runs = {}
    for arch in NEW_FAMILIES:
        model_dir = model_dir_for(arch, request)
        for name, overrides in RUN_OVERRIDES.items():
            if name == "dpo":
                overrides = {**overrides, **STOCK_RUN_OVERRIDES.get(arch, {})}
            config = tiny_training_config(arch, model_dir, shapes_dataset_dir, tmp_path / arch / name, **overrides)
            runs[f"{arch}-{name}"] = (config, tmp_path / arch / f"{name}-work")
    logs = train_in_one_process(runs)
    for arch in NEW_FAMILIES:
        check_ue_metrics(logs[f"{arch}-ue"])
        stock = [entry["loss"] for entry in logs[f"{arch}-dpo"]]
        assert len(stock) == 2
        assert [entry["loss"] for entry in logs[f"{arch}-alpha0"]] == pytest.approx(stock, rel=1e-5, abs=1e-6), arch
        assert logs[f"{arch}-ue"][0]["loss"] != pytest.approx(stock[0], rel=1e-4)


@pytest.mark.parametrize("arch", ["llava_next", "mistral3"])
def test_images_of_different_sizes_train_with_ue_metrics_and_the_adapter_evaluates(
    arch, request, mixed_sizes_dataset_dir, tmp_path
):
    from PIL import Image

    from ue_dpo.evaluation.model import UeDpoHF

    out = tmp_path / "out"
    config = tiny_training_config(arch, model_dir_for(arch, request), mixed_sizes_dataset_dir, out)
    check_ue_metrics(train_or_fail(config, tmp_path))
    # ue_dpo_hf on the trained adapter: a left-padded batch of a 56 x 56 and a 28 x 56 image (padded patches or
    # rows, with image_sizes) scores its first generated token as a plain forward does
    model = UeDpoHF(pretrained=str(out), device="cpu")
    assert model.template_name == config["template"]
    images = [Image.open(mixed_sizes_dataset_dir / "images" / "shapes_pref" / f"{index:05d}.png") for index in (0, 1)]
    inputs = model.model_inputs([("Describe this image.", images[:1]), ("What is in the picture?", images[1:])])
    assert inputs["image_sizes"][0].tolist() != inputs["image_sizes"][1].tolist()
    with torch.inference_mode():
        forward_logits = model.model(**inputs).logits[:, -1]
        generated = model.model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=model.pad_token_id,
        )
    torch.testing.assert_close(generated.logits[0], forward_logits, rtol=1e-4, atol=1e-4)


def test_alpha_zero_on_images_of_different_sizes_logs_the_losses_of_stage_dpo(
    tiny_llava_next_dir, tiny_mistral3_dir, tiny_pixtral_dir, tiny_llama4_dir, mixed_sizes_dataset_dir, tmp_path
):
    """Llama 4 too (its 42 x 56 image pads its canvas), and its mixture of experts: its stock run sets LLaMA-Factory's
    router-loss coefficient, which LLaMA-Factory's DPO never adds to the loss (`stage: ue_dpo` refuses the key)."""

    def run(arch, model_dir, name, **overrides):
        config = tiny_training_config(arch, model_dir, mixed_sizes_dataset_dir, tmp_path / arch / name, **overrides)
        return config, tmp_path / arch / f"{name}-work"

    runs = {
        f"{arch}-{name}": run(arch, model_dir, name, **overrides)
        for arch, model_dir in (("llava_next", tiny_llava_next_dir), ("mistral3", tiny_mistral3_dir))
        for name, overrides in (("dpo", {"stage": "dpo"}), ("alpha0", {"ue_alpha": 0.0}))
    }
    runs["pixtral-ue"] = run("pixtral", tiny_pixtral_dir, "ue")  # Pixtral-12B: a `llava` model, `template: pixtral`
    runs["llama4-dpo"] = run("llama4", tiny_llama4_dir, "dpo", stage="dpo", moe_aux_loss_coef=0.001)
    runs["llama4-alpha0"] = run("llama4", tiny_llama4_dir, "alpha0", ue_alpha=0.0)
    runs["llama4-ue"] = run("llama4", tiny_llama4_dir, "ue")
    logs = train_in_one_process(runs)
    check_ue_metrics(logs["pixtral-ue"])
    check_ue_metrics(logs["llama4-ue"])
    assert logs["llama4-ue"][0]["loss"] != pytest.approx(logs["llama4-dpo"][0]["loss"], rel=1e-4)
    for arch in ("llava_next", "mistral3", "llama4"):
        stock = [entry["loss"] for entry in logs[f"{arch}-dpo"]]
        alpha0 = [entry["loss"] for entry in logs[f"{arch}-alpha0"]]
        assert len(stock) == 2 and alpha0 == pytest.approx(stock, rel=1e-5, abs=1e-6), arch


def test_resume_from_checkpoint_continues_the_run(trained):
    log, out = trained["resume-second"]
    first = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert first["global_step"] == 2 and first["max_steps"] == 2  # saved by the first run
    assert [entry["step"] for entry in log] == [1, 2, 3]
    check_ue_metrics(log[2:])


def test_image_noise_space_and_batch_scope_train(trained):
    log, _ = trained["image-noise"]
    assert log
    assert all(entry["ue/lambda_rejected_mean"] == 1.0 for entry in log)
    assert all(entry["ue/lambda_chosen_mean"] > 1.0 for entry in log)


def train_with_and_without_prefix_sharing(config: dict, tmp_path: Path, master_port: int, **env: str) -> list[dict]:
    """Trains `config` with `ue_prefix_sharing` on and off; checks both log the same steps and save the same
    adapter, and returns the shared run's log."""
    runs = {}
    for offset, sharing in enumerate((True, False)):
        out = tmp_path / f"sharing-{sharing}"
        result = run_train(
            {**config, "output_dir": str(out / "out"), "ue_prefix_sharing": sharing},
            out,
            MASTER_PORT=str(master_port + offset),
            **env,
        )
        assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        shared_lines = "each pair's prompt and image are computed once per pass" in result.stdout + result.stderr
        assert shared_lines == sharing and "computing unshared rows" not in result.stdout + result.stderr
        runs[sharing] = (training_log(out / "out"), load_file(out / "out" / "adapter_model.safetensors"))
    (shared_log, shared_adapter), (unshared_log, unshared_adapter) = runs[True], runs[False]
    assert [entry["step"] for entry in shared_log] == [entry["step"] for entry in unshared_log]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
        "ue/lambda_chosen_mean",
        "ue/lambda_rejected_mean",
        "ue/u_mean",
        "ue/delta_mean",
    ):
        assert [entry[key] for entry in shared_log] == pytest.approx(
            [entry[key] for entry in unshared_log], rel=1e-5, abs=1e-6
        ), key
    assert shared_adapter.keys() == unshared_adapter.keys()
    for name, weight in unshared_adapter.items():
        torch.testing.assert_close(shared_adapter[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    return shared_log


def test_two_process_torchrun_with_and_without_prefix_sharing(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    config = tiny_training_config(
        "qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out", ue_stat_scope="batch", ddp_backend="gloo"
    )
    log = train_with_and_without_prefix_sharing(config, tmp_path, 29571, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    check_ue_metrics(log)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_zero_with_and_without_prefix_sharing(zero_stage, tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    config_dir = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
    config = tiny_training_config(
        "qwen2_vl",
        tiny_qwen2_vl_dir,
        shapes_dataset_dir,
        tmp_path / "out",
        deepspeed=str(config_dir / f"ds_z{zero_stage}.json"),
    )
    log = train_with_and_without_prefix_sharing(
        config, tmp_path, 29580 + 10 * zero_stage, FORCE_TORCHRUN="1", NPROC_PER_NODE="1"
    )
    check_ue_metrics(log)


def test_unsupported_template_is_refused_clearly(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    result = run_train(
        tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out", template="qwen"),
        tmp_path,
    )
    assert result.returncode != 0
    assert (
        "this template's multimodal plugin BasePlugin does not lay out Qwen2-VL, Qwen2.5-VL images (it has no image "
        "token); Qwen2-VL, Qwen2.5-VL trains with `template: qwen2_vl` (plugin Qwen2VLPlugin)"
    ) in result.stderr
    assert "Loading weights" not in result.stderr  # refused before the model loads


def test_dataset_without_ranking_is_refused_clearly(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    result = run_train(
        tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out", dataset="shapes_sft"),
        tmp_path,
    )
    assert result.returncode != 0
    assert "dataset `shapes_sft` is not a preference dataset" in result.stderr
    assert '"ranking": true' in result.stderr


def test_a_bad_key_prints_its_message_alone_and_the_switch_brings_the_traceback_back(
    tiny_llava_dir, shapes_dataset_dir, tmp_path
):
    config = tiny_training_config("llava", tiny_llava_dir, shapes_dataset_dir, tmp_path / "out", ue_alpha=1.5)
    message = "`ue_alpha: 1.5` is out of range"
    short = run_train(config, tmp_path / "short")
    assert short.returncode != 0
    assert "Traceback" not in short.stderr, short.stderr[-3000:]
    lines = short.stderr.strip().splitlines()
    assert message in lines[-2] and len(lines) <= 12, short.stderr[-3000:]
    assert lines[-1] == "(UE_DPO_TRACEBACK=1 shows the traceback)"

    verbose = run_train(config, tmp_path / "verbose", UE_DPO_TRACEBACK="1")
    assert verbose.returncode != 0
    assert "Traceback (most recent call last)" in verbose.stderr
    assert f"ue_dpo.argument_checks.UEDPOUserError: {message}" in verbose.stderr
