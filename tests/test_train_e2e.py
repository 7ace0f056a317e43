"""`llamafactory-cli train` with `stage: ue_dpo` on tiny local LLaVA and Qwen2-VL checkpoints."""

import json
from pathlib import Path

import pytest

from llamafactory_runs import run_train, train_or_fail
from tiny_training_config import tiny_training_config

UE_KEYS = {
    "ue/selected_share_chosen", "ue/selected_share_rejected", "ue/lambda_chosen_mean", "ue/lambda_rejected_mean",
    "ue/u_mean", "ue/delta_mean", "ue/imageless_pairs",
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
    out = tmp_path / "out"
    log = train_or_fail(tiny_training_config(arch, model_dir_for(arch, request), shapes_dataset_dir, out,
                                             plot_loss=True), tmp_path)
    check_ue_metrics(log)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "training_loss.png").exists()


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_full_finetuning_uses_a_frozen_reference_copy(arch, request, shapes_dataset_dir, tmp_path):
    out = tmp_path / "out"
    log = train_or_fail(tiny_training_config(arch, model_dir_for(arch, request), shapes_dataset_dir, out,
                                             finetuning_type="full", freeze_vision_tower=True,
                                             learning_rate=1e-4, ue_weight_target="logratio"), tmp_path)
    check_ue_metrics(log)
    # step 1: the frozen copy equals the policy, so λ·(log πθ - log π_ref) is exactly 0
    assert log[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert log[1]["rewards/chosen"] != pytest.approx(0.0, abs=1e-6)
    assert (out / "model.safetensors").exists()


def test_alpha_zero_logs_the_same_loss_as_stage_dpo_and_default_alpha_differs(tiny_qwen2_vl_dir, shapes_dataset_dir,
                                                                            tmp_path):
    def losses(name, **overrides):
        config = tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / name,
                                      max_steps=3, **overrides)
        return [entry["loss"] for entry in train_or_fail(config, tmp_path / f"{name}-work")]

    stock = losses("dpo", stage="dpo")
    assert losses("alpha0", ue_alpha=0.0) == pytest.approx(stock, rel=1e-5, abs=1e-6)
    weighted = losses("alpha03", ue_alpha=0.3)
    assert weighted[0] != pytest.approx(stock[0], rel=1e-4)


def test_resume_from_checkpoint_continues_the_run(tiny_llava_dir, shapes_dataset_dir, tmp_path):
    out = tmp_path / "out"
    config = tiny_training_config("llava", tiny_llava_dir, shapes_dataset_dir, out, max_steps=2,
                                  save_strategy="steps", save_steps=1)
    train_or_fail(config, tmp_path / "first")
    assert (out / "checkpoint-2").is_dir()
    log = train_or_fail({**config, "max_steps": 3, "overwrite_output_dir": False,
                         "resume_from_checkpoint": str(out / "checkpoint-2")}, tmp_path / "second")
    assert [entry["step"] for entry in log] == [1, 2, 3]
    check_ue_metrics(log[2:])


def test_image_noise_space_and_batch_scope_train(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    log = train_or_fail(tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out",
                                             ue_noise_space="image", ue_stat_scope="batch",
                                             ue_weight_target="logratio", ue_branches="chosen", pref_ftx=0.5),
                        tmp_path)
    assert all(entry["ue/lambda_rejected_mean"] == 1.0 for entry in log)
    assert all(entry["ue/lambda_chosen_mean"] > 1.0 for entry in log)


def test_two_process_torchrun(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    log = train_or_fail(tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out",
                                             ue_stat_scope="batch", ddp_backend="gloo"),
                        tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2", MASTER_PORT="29571")
    check_ue_metrics(log)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_zero(zero_stage, tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    config_dir = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
    log = train_or_fail(tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out",
                                             deepspeed=str(config_dir / f"ds_z{zero_stage}.json")),
                        tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="1", MASTER_PORT=str(29580 + zero_stage))
    check_ue_metrics(log)


def test_unsupported_template_is_refused_clearly(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    result = run_train(tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out",
                                            template="qwen"), tmp_path)
    assert result.returncode != 0
    assert "Supported templates: llava, qwen2_vl (Qwen2-VL, Qwen2.5-VL)" in result.stderr


def test_dataset_without_ranking_is_refused_clearly(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path):
    result = run_train(tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path / "out",
                                            dataset="shapes_sft"), tmp_path)
    assert result.returncode != 0
    assert "dataset `shapes_sft` is not a preference dataset" in result.stderr
    assert '"ranking": true' in result.stderr
