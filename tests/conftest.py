"""Shared fixtures. Everything is built locally; the environment below keeps every library offline."""

import os

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "DISABLE_VERSION_CHECK": "1",
    }
)

import pytest

from ue_dpo.synthetic.shapes import write_preference_dataset, write_sft_dataset
from ue_dpo.synthetic.tiny_models import (
    build_tiny_glm4v,
    build_tiny_llava,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    build_tiny_qwen3_5,
    build_tiny_qwen3_vl,
)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_5_dir(tmp_path_factory):
    return build_tiny_qwen3_5(tmp_path_factory.mktemp("tiny_qwen3_5"), seed=0)


@pytest.fixture(scope="session")
def tiny_glm4v_dir(tmp_path_factory):
    return build_tiny_glm4v(tmp_path_factory.mktemp("tiny_glm4v"), seed=0)


@pytest.fixture(scope="session")
def shapes_dataset_dir(tmp_path_factory):
    """A LLaMA-Factory dataset dir holding `shapes_pref` and `shapes_sft`, 8 records each (tests count on 8)."""
    dataset_dir = tmp_path_factory.mktemp("shapes")
    write_preference_dataset(dataset_dir, n_pairs=8, seed=0)
    write_sft_dataset(dataset_dir, n_examples=8, seed=0)
    return dataset_dir
