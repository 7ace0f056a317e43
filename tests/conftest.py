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

from pathlib import Path

import pytest
import yaml
from PIL import Image

from llamafactory_runs import parsed_by_llamafactory_parser
from readme_training import readme_configs
from ue_dpo.synthetic.shapes import write_preference_dataset, write_sft_dataset
from ue_dpo.synthetic.tiny_models import (
    build_tiny_gemma3,
    build_tiny_glm4v,
    build_tiny_glm4v_moe,
    build_tiny_internvl,
    build_tiny_llama4,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_mistral3,
    build_tiny_pixtral,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    build_tiny_qwen3_5,
    build_tiny_qwen3_5_moe,
    build_tiny_qwen3_vl,
    build_tiny_qwen3_vl_moe,
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
def tiny_qwen3_vl_moe_dir(tmp_path_factory):
    return build_tiny_qwen3_vl_moe(tmp_path_factory.mktemp("tiny_qwen3_vl_moe"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_5_moe_dir(tmp_path_factory):
    return build_tiny_qwen3_5_moe(tmp_path_factory.mktemp("tiny_qwen3_5_moe"), seed=0)


@pytest.fixture(scope="session")
def tiny_glm4v_moe_dir(tmp_path_factory):
    return build_tiny_glm4v_moe(tmp_path_factory.mktemp("tiny_glm4v_moe"), seed=0)


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"), seed=0)


@pytest.fixture(scope="session")
def tiny_mistral3_dir(tmp_path_factory):
    return build_tiny_mistral3(tmp_path_factory.mktemp("tiny_mistral3"), seed=0)


@pytest.fixture(scope="session")
def tiny_pixtral_dir(tmp_path_factory):
    return build_tiny_pixtral(tmp_path_factory.mktemp("tiny_pixtral"), seed=0)


@pytest.fixture(scope="session")
def mixed_sizes_dataset_dir(tmp_path_factory):
    """`shapes_pref` with 4 pairs whose images are 56 x 56, 28 x 56, 42 x 56 and 56 x 56 (height x width), the top
    rows of the square scenes: batches of 2 pairs hold images of different sizes, so tiled and variable-size
    layouts pad (LLaVA-NeXT: 5 and 3 patches, and a letterboxed canvas; Pixtral: a 28-row image under a 56-row one).
    """
    dataset_dir = tmp_path_factory.mktemp("mixed_sizes")
    write_preference_dataset(dataset_dir, n_pairs=4, seed=0, image_size=56)
    for index, height in enumerate((56, 28, 42, 56)):
        path = dataset_dir / "images" / "shapes_pref" / f"{index:05d}.png"
        Image.open(path).crop((0, 0, 56, height)).save(path)
    return dataset_dir


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory):
    return build_tiny_internvl(tmp_path_factory.mktemp("tiny_internvl"), seed=0)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny_gemma3"), seed=0)


@pytest.fixture(scope="session")
def tiny_llama4_dir(tmp_path_factory):
    return build_tiny_llama4(tmp_path_factory.mktemp("tiny_llama4"), seed=0)


@pytest.fixture(scope="session")
def shapes_dataset_dir(tmp_path_factory):
    """A LLaMA-Factory dataset dir holding `shapes_pref` and `shapes_sft`, 8 records each (tests count on 8)."""
    dataset_dir = tmp_path_factory.mktemp("shapes")
    write_preference_dataset(dataset_dir, n_pairs=8, seed=0)
    write_sft_dataset(dataset_dir, n_examples=8, seed=0)
    return dataset_dir


@pytest.fixture(scope="session")
def llamafactory_parsed(tmp_path_factory):
    """The recipes of configs/train/ and the README's training YAML (`readme.yaml`, `defaults.yaml`: see
    readme_training.readme_configs) through LLaMA-Factory's parser in one process, whose import of LLaMA-Factory is
    most of its time, run from a folder laid out like the repository root after `ue-dpo data rlhf_v|rlaif_v --out
    data` (here on tiny files in the public schemas) -> (what the parser resolved by config file name, the folder)."""
    from public_preference_files import write_rlaif_v, write_rlhf_v
    from ue_dpo import recipes
    from ue_dpo.datasets import convert

    root = tmp_path_factory.mktemp("checkout")
    repo = Path(__file__).resolve().parents[1]
    (root / "configs").symlink_to(repo / "configs")
    sources = root / "sources"
    convert("rlhf_v", root / recipes.DATASET_DIR, source=str(write_rlhf_v(sources / "rlhf_v")))
    convert("rlaif_v", root / recipes.DATASET_DIR, source=str(write_rlaif_v(sources / "rlaif_v")))
    configs = [str(path.relative_to(repo)) for path in sorted((repo / "configs" / "train").glob("*.yaml"))]
    for name, config in readme_configs().items():
        (root / name).write_text(yaml.safe_dump(config))
        configs.append(name)
    return parsed_by_llamafactory_parser(root, configs), root
