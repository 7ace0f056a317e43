import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true",
    "DISABLE_VERSION_CHECK": "1",
}.items():
    os.environ[_name] = _value

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from ue_dpo.tiny_models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory):
    from ue_dpo.tiny_models import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def shapes_dataset_dir(tmp_path_factory):
    from ue_dpo.shapes import write_preference_dataset

    return write_preference_dataset(tmp_path_factory.mktemp("shapes"), n_pairs=8)
