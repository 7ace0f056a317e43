"""The tiny local models and the shapes dataset, checked through transformers' Auto classes and LLaMA-Factory."""

import filecmp
import json
import math
import random
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ue_dpo.synthetic.shapes import (
    BACKGROUND,
    COLOURS,
    PREFERENCE_DATASET,
    QUADRANTS,
    SFT_DATASET,
    Scene,
    ShapeObject,
    hallucinated_caption,
    mentioned_shapes,
    quadrant_box,
    random_scene,
    write_caption_eval_set,
    write_preference_dataset,
    write_sft_dataset,
)
from ue_dpo.synthetic.tiny_models import (
    GLM4V_ADDED_TOKENS,
    GLM4V_TEXT_TOKENS,
    QWEN2_VL_ADDED_TOKENS,
    QWEN3_THINK_TOKENS,
    build_tiny_model,
)

ARCHITECTURES = ("llava", "qwen2_vl")
# each loads and batches; the first two train stock DPO
FAMILY_ARCHITECTURES = (*ARCHITECTURES, "qwen3_vl", "qwen3_5", "glm4v")
# each loads with its real classes: the mixture-of-experts models beside their dense siblings
LOADED_ARCHITECTURES = (*FAMILY_ARCHITECTURES, "qwen3_vl_moe", "qwen3_5_moe", "glm4v_moe")
EXPECTED_CLASSES = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "LlamaTokenizer", "CLIPImageProcessor"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2Tokenizer", "Qwen2VLImageProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen2Tokenizer", "Qwen2VLImageProcessor"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", "Qwen3_5Tokenizer", "Qwen2VLImageProcessor"),
    "glm4v": ("Glm4vForConditionalGeneration", "Glm4vProcessor", "TokenizersBackend", "Glm4vImageProcessor"),
    "qwen3_vl_moe": (
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3VLProcessor",
        "Qwen2Tokenizer",
        "Qwen2VLImageProcessor",
    ),
    "qwen3_5_moe": (
        "Qwen3_5MoeForConditionalGeneration",
        "Qwen3VLProcessor",
        "Qwen3_5Tokenizer",
        "Qwen2VLImageProcessor",
    ),
    "glm4v_moe": ("Glm4vMoeForConditionalGeneration", "Glm4vProcessor", "TokenizersBackend", "Glm4vImageProcessor"),
}
VISUAL_TOKENS_PER_IMAGE = 4  # one per quadrant of a shapes image
# how each LLaMA-Factory template labels a reply: the reasoning templates start it with an empty thought block
LABELLED_ANSWER = {
    "llava": "{}</s>",
    "qwen2_vl": "{}<|im_end|>\n",
    "qwen3_vl": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_5": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "glm4v": "<think>\n\n</think>\n\n\n{}<|endoftext|>",  # the think block before the template's own newline
}
LANGUAGE_MODEL_LINEARS = {
    f"model.language_model.layers.{layer}.{module}"
    for layer in (0, 1)
    for module in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
}
# The share of its box that each shape fills: this is how the tests read shapes back from the pixels.
FILL_SHARE = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5, "star": 0.3}
COLOUR_NAMES = {rgb: name for name, rgb in COLOURS.items()}


def model_dir_for(arch, request):
    return request.getfixturevalue(f"tiny_{arch}_dir")


def drawn_objects(image: Image.Image) -> list[tuple[str, str]]:
    """(colour, shape) of what is drawn in each quadrant, in reading order, recognised from the pixels."""
    half = image.width // 2
    objects = []
    for quadrant in range(QUADRANTS):
        left, top = (quadrant % 2) * half, (quadrant // 2) * half
        cell = image.crop((left, top, left + half, top + half))
        colours = {pixel for pixel in cell.getdata()} - {BACKGROUND}
        if not colours:
            continue
        assert len(colours) == 1, f"quadrant {quadrant} mixes colours {colours}"
        (rgb,) = colours
        box_left, box_top, box_right, box_bottom = quadrant_box(quadrant, image.width)
        box = image.crop((box_left, box_top, box_right + 1, box_bottom + 1))
        share = list(box.getdata()).count(rgb) / (box.width * box.height)
        shape = min(FILL_SHARE, key=lambda name: abs(FILL_SHARE[name] - share))
        objects.append((COLOUR_NAMES[rgb], shape))
    return objects


def caption_objects(caption: str) -> list[tuple[str, str]]:
    phrases = caption.removeprefix("There is ").removesuffix(".").replace(" and ", ", ").split(", ")
    return [tuple(phrase.split()[1:]) for phrase in phrases]  # "a red circle" -> ("red", "circle")


def llamafactory_modules(model_dir, dataset_dir, template, stage, output_dir, dataset):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(model_dir),
            "stage": stage,
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": dataset,
            "dataset_dir": str(dataset_dir),
            "template": template,
            "cutoff_len": 256,
            "output_dir": str(output_dir),
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    return template, tokenizer_module, (model_args, data_args, training_args)


@pytest.mark.parametrize("arch", LOADED_ARCHITECTURES)
def test_models_load_offline_with_the_real_auto_classes(arch, request):
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    model_dir = model_dir_for(arch, request)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    loaded = (
        type(model).__name__,
        type(processor).__name__,
        type(tokenizer).__name__,
        type(processor.image_processor).__name__,
    )
    assert loaded == EXPECTED_CLASSES[arch]
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert sum(parameter.numel() for parameter in model.parameters()) < 300_000
    caption = "There is a red circle, a blue star and a green triangle."
    caption_ids = tokenizer(caption, add_special_tokens=False).input_ids
    assert tokenizer.decode(caption_ids) == caption
    # The built-in corpus taught it whole words: at most one token per word or punctuation mark.
    assert len(caption_ids) <= len(re.findall(r"\w+|[^\w\s]", caption))
    if arch == "llava":
        assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x0A>"]) == [0, 1, 2, 3 + 0x0A]
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
        assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [len(tokenizer) - 2, len(tokenizer) - 1]
        assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
        assert tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id
    elif arch in ("glm4v", "glm4v_moe"):
        added_ids = tokenizer.convert_tokens_to_ids([*GLM4V_ADDED_TOKENS, *GLM4V_TEXT_TOKENS])
        assert added_ids == list(range(len(tokenizer) - len(added_ids), len(tokenizer)))
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
            None,
            "<|endoftext|>",
            "<|endoftext|>",
        )
        token_ids = tokenizer.convert_tokens_to_ids
        assert (model.config.image_token_id, model.config.image_start_token_id, model.config.image_end_token_id) == (
            token_ids("<|image|>"),
            token_ids("<|begin_of_image|>"),
            token_ids("<|end_of_image|>"),
        )
        assert type(processor.video_processor).__name__ == "Glm4vVideoProcessor"
    else:
        added = [*QWEN2_VL_ADDED_TOKENS, *(QWEN3_THINK_TOKENS if arch != "qwen2_vl" else ())]
        added_ids = tokenizer.convert_tokens_to_ids(added)
        assert added_ids == list(range(len(tokenizer) - len(added), len(tokenizer)))
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
        token_ids = tokenizer.convert_tokens_to_ids
        assert (model.config.image_token_id, model.config.video_token_id) == (
            token_ids("<|image_pad|>"),
            token_ids("<|video_pad|>"),
        )
        assert (model.config.vision_start_token_id, model.config.vision_end_token_id) == (
            token_ids("<|vision_start|>"),
            token_ids("<|vision_end|>"),
        )
        video_processor = "Qwen2VLVideoProcessor" if arch == "qwen2_vl" else "Qwen3VLVideoProcessor"
        assert type(processor.video_processor).__name__ == video_processor


@pytest.mark.parametrize("arch", FAMILY_ARCHITECTURES)
def test_llamafactory_batches_give_each_image_the_visual_tokens_the_model_consumes(
    arch, request, shapes_dataset_dir, tmp_path
):
    from llamafactory.data import MultiModalDataCollatorForSeq2Seq, get_dataset
    from transformers import AutoModelForImageTextToText

    model_dir = model_dir_for(arch, request)
    template, tokenizer_module, arguments = llamafactory_modules(
        model_dir, shapes_dataset_dir, arch, "sft", tmp_path, SFT_DATASET
    )
    rows = get_dataset(template, *arguments, stage="sft", **tokenizer_module)["train_dataset"]
    record = json.loads((shapes_dataset_dir / f"{SFT_DATASET}.json").read_text())[0]
    tokenizer = tokenizer_module["tokenizer"]
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    collator = MultiModalDataCollatorForSeq2Seq(
        template=template,
        model=model,
        tokenizer=tokenizer,
        processor=tokenizer_module["processor"],
        label_pad_token_id=-100,
    )
    batch = collator([rows[0], rows[1]])

    vision = model.config.vision_config
    if arch == "llava":
        assert tuple(batch["pixel_values"].shape) == (2, 3, vision.image_size, vision.image_size)
        visual_tokens = (vision.image_size // vision.patch_size) ** 2
    else:
        assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
        assert tuple(batch["pixel_values"].shape) == (2 * 16, 3 * 2 * vision.patch_size**2)
        visual_tokens = 16 // vision.spatial_merge_size**2
    assert visual_tokens == VISUAL_TOKENS_PER_IMAGE
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [visual_tokens] * 2
    answer_ids = [token for token in rows[0]["labels"] if token != -100]
    assert tokenizer.decode(answer_ids) == LABELLED_ANSWER[arch].format(record["messages"][1]["content"])

    # The model itself raises when image tokens and image features disagree.
    with torch.no_grad():
        output = model(**batch)
    assert tuple(output.logits.shape) == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_gives_an_identical_checkpoint(arch, request, tmp_path):
    model_dir = model_dir_for(arch, request)
    rebuilt = build_tiny_model(arch, tmp_path / "seed0", seed=0)
    other_seed = build_tiny_model(arch, tmp_path / "seed1", seed=1)

    files = sorted(path.name for path in model_dir.iterdir())
    assert {"model.safetensors", "tokenizer.json", "config.json", "processor_config.json"} <= set(files)
    assert sorted(path.name for path in rebuilt.iterdir()) == files
    assert all(filecmp.cmp(model_dir / name, rebuilt / name, shallow=False) for name in files)
    assert filecmp.cmp(model_dir / "tokenizer.json", other_seed / "tokenizer.json", shallow=False)
    weights, other_weights = load_file(model_dir / "model.safetensors"), load_file(other_seed / "model.safetensors")
    assert weights.keys() == other_weights.keys()
    matrices = [name for name, tensor in weights.items() if tensor.ndim >= 2]
    assert len(matrices) > 20
    assert not any(torch.equal(weights[name], other_weights[name]) for name in matrices)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_builders_take_the_shapes(arch, tmp_path):
    """What bench/run.py builds its models with: other widths, depths, vocabulary and image size."""
    from transformers import AutoConfig, AutoProcessor

    text = {
        "hidden_size": 96,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    }
    vision = {"llava": {"num_hidden_layers": 1}, "qwen2_vl": {"depth": 1}}[arch]
    model_dir = build_tiny_model(arch, tmp_path / arch, text=text, vision=vision, vocab_size=2048, image_size=112)
    config = AutoConfig.from_pretrained(model_dir)
    assert {key: getattr(config.text_config, key) for key in text} == text
    assert config.text_config.vocab_size == 2048
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.new("RGB", (112, 112), "white")
    batch = processor.image_processor(images=[image], return_tensors="pt")
    if arch == "llava":
        assert config.vision_config.num_hidden_layers == 1
        assert config.image_seq_length == (112 // 14) ** 2 and batch["pixel_values"].shape[-1] == 112
    else:
        assert config.vision_config.depth == 1 and config.vision_config.hidden_size == 96
        assert batch["image_grid_thw"].tolist() == [[1, 112 // 14, 112 // 14]]
    with pytest.raises(ValueError, match="smaller than the tokenizer's"):
        build_tiny_model(arch, tmp_path / "small", vocab_size=8)


def test_unknown_architecture_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match="unknown tiny model architecture 'blip2': use one of llava, qwen2_vl, llava_next, mistral3, pixtral",
    ):
        build_tiny_model("blip2", tmp_path)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stock_llamafactory_dpo_lora_step_saves_a_language_model_adapter(arch, request, shapes_dataset_dir, tmp_path):
    from llamafactory.train.tuner import run_exp

    output_dir = tmp_path / "dpo"
    run_exp(
        {
            "model_name_or_path": str(model_dir_for(arch, request)),
            "stage": "dpo",
            "do_train": True,
            "finetuning_type": "lora",
            "lora_target": "all",
            "dataset": PREFERENCE_DATASET,
            "dataset_dir": str(shapes_dataset_dir),
            "template": arch,
            "cutoff_len": 256,
            "output_dir": str(output_dir),
            "overwrite_output_dir": True,
            "per_device_train_batch_size": 2,
            "max_steps": 1,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
        }
    )

    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert set(adapter_config["target_modules"]) == LANGUAGE_MODEL_LINEARS  # the vision side stays frozen
    assert len(load_file(output_dir / "adapter_model.safetensors")) == 2 * len(LANGUAGE_MODEL_LINEARS)
    log = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    # Before the first update the policy equals the reference model, so the DPO loss is -log(sigmoid(0)).
    assert [entry["loss"] for entry in log if "loss" in entry] == [pytest.approx(math.log(2), abs=1e-4)]


def test_preference_pairs_caption_exactly_the_drawn_shapes_and_reject_one_hallucination(shapes_dataset_dir):
    records = json.loads((shapes_dataset_dir / f"{PREFERENCE_DATASET}.json").read_text())
    assert len(records) == 8
    for record in records:
        assert record["messages"] == [{"role": "user", "content": "<image>Describe this image."}]
        with Image.open(shapes_dataset_dir / record["images"][0]) as image:
            assert image.size == (56, 56)
            drawn = drawn_objects(image.convert("RGB"))
        chosen, rejected = record["chosen"]["content"], record["rejected"]["content"]
        assert caption_objects(chosen) == drawn
        assert mentioned_shapes(chosen) == [shape for _, shape in drawn]
        hallucinated = [item for item in caption_objects(rejected) if item not in drawn]
        assert len(hallucinated) == 1
        assert hallucinated[0][1] not in mentioned_shapes(chosen)
        assert [item for item in caption_objects(rejected) if item != hallucinated[0]] == drawn


def test_shape_mentions_are_found_in_free_text():
    text = "Two Stars, a circle; no squares. A starry triangle? Triangles!"
    assert mentioned_shapes(text) == ["star", "circle", "square", "triangle", "triangle"]
    assert mentioned_shapes("Nothing but a cat.") == []


@pytest.mark.parametrize("dataset, stage", [(PREFERENCE_DATASET, "rm"), (SFT_DATASET, "sft")])
def test_dataset_info_entries_load_through_llamafactory(
    dataset, stage, tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path
):
    from llamafactory.data import get_dataset

    info = json.loads((shapes_dataset_dir / "dataset_info.json").read_text())
    columns = {"messages": "messages", "images": "images"}
    if stage == "rm":
        columns.update(chosen="chosen", rejected="rejected")
    assert info[dataset] == {
        "file_name": f"{dataset}.json",
        "formatting": "sharegpt",
        "ranking": stage == "rm",
        "columns": columns,
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }

    template, tokenizer_module, arguments = llamafactory_modules(
        tiny_qwen2_vl_dir, shapes_dataset_dir, "qwen2_vl", stage, tmp_path, dataset
    )
    rows = get_dataset(template, *arguments, stage=stage, **tokenizer_module)["train_dataset"]
    records = json.loads((shapes_dataset_dir / f"{dataset}.json").read_text())
    tokenizer = tokenizer_module["tokenizer"]
    assert len(rows) == len(records) == 8
    for row, record in zip(rows, records, strict=True):
        assert row["images"] == [str(shapes_dataset_dir / record["images"][0])]
        if stage == "rm":
            answers = {"chosen_labels": record["chosen"]["content"], "rejected_labels": record["rejected"]["content"]}
        else:
            answers = {"labels": record["messages"][1]["content"]}
        for label_key, answer in answers.items():
            trained_on = [token for token in row[label_key] if token != -100]
            assert tokenizer.decode(trained_on) == LABELLED_ANSWER["qwen2_vl"].format(answer)


def test_caption_eval_set_gives_ground_truth_and_is_deterministic(tmp_path):
    items = write_caption_eval_set(tmp_path / "a", n_images=12, seed=0)
    again = write_caption_eval_set(tmp_path / "b", n_images=12, seed=0)
    other_seed = write_caption_eval_set(tmp_path / "c", n_images=12, seed=1)

    assert [(item.shapes, item.caption) for item in items] == [(item.shapes, item.caption) for item in again]
    assert [item.caption for item in items] != [item.caption for item in other_seed]
    for item, copy in zip(items, again, strict=True):
        assert filecmp.cmp(item.image_path, copy.image_path, shallow=False)
    for item in items:
        with Image.open(item.image_path) as image:
            assert tuple(shape for _, shape in drawn_objects(image.convert("RGB"))) == item.shapes
        assert 1 <= len(item.shapes) <= 3
        assert tuple(mentioned_shapes(item.caption)) == item.shapes
    manifest = json.loads((tmp_path / "a" / "shapes_eval.json").read_text())
    assert manifest[0] == {
        "image": "images/eval/00000.png",
        "shapes": list(items[0].shapes),
        "caption": items[0].caption,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_pairs": 0}, "n_pairs must be a positive integer, got 0"),
        ({"n_pairs": 2, "image_size": 20}, "image_size must be an integer of at least 28 pixels"),
    ],
)
def test_bad_dataset_arguments_are_refused_by_name(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write_preference_dataset(tmp_path, **kwargs)
    assert not (tmp_path / "dataset_info.json").exists()


def test_bad_scenes_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown colour 'purple': use one of red, green, blue, yellow"):
        ShapeObject("purple", "circle", 0)
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        ShapeObject("red", "hexagon", 0)
    with pytest.raises(ValueError, match="quadrant must be 0-3"):
        ShapeObject("red", "circle", 4)
    with pytest.raises(ValueError, match="a scene needs distinct shapes in distinct quadrants, sorted by quadrant"):
        Scene((ShapeObject("red", "circle", 2), ShapeObject("blue", "circle", 3)))
    every_shape = Scene(
        tuple(
            ShapeObject("red", shape, quadrant)
            for quadrant, shape in enumerate(("circle", "square", "triangle", "star"))
        )
    )
    with pytest.raises(ValueError, match="a scene with 4 shapes leaves no absent shape"):
        hallucinated_caption(every_shape, random.Random(0))


def test_random_scenes_hold_one_to_three_distinct_shapes_in_reading_order():
    rng = random.Random(7)
    scenes = [random_scene(rng) for _ in range(200)]
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3}
    assert {item.colour for scene in scenes for item in scene.objects} == set(COLOURS)
    for scene in scenes:
        assert len(set(scene.shapes)) == len(scene.shapes)
        assert [item.quadrant for item in scene.objects] == sorted({item.quadrant for item in scene.objects})
        assert len(mentioned_shapes(hallucinated_caption(scene, rng))) == len(scene.shapes) + 1


def test_noisy_warm_up_captions_add_one_absent_shape_to_the_same_scenes(tmp_path):
    def captions(noisy_share: float) -> list[str]:
        out = tmp_path / str(noisy_share)
        write_sft_dataset(out, n_examples=200, seed=3, noisy_share=noisy_share)
        return [record["messages"][1]["content"] for record in json.loads((out / "shapes_sft.json").read_text())]

    clean, noisy = captions(0.0), captions(0.5)
    changed = 0
    for true_caption, noisy_caption in zip(clean, noisy):
        truth, named = mentioned_shapes(true_caption), mentioned_shapes(noisy_caption)
        if noisy_caption != true_caption:
            changed += 1
            assert len(named) == len(truth) + 1 and set(truth) < set(named)
    assert 80 <= changed <= 120  # Binomial(200, 0.5): outside this range with probability < 0.5%
    same_images = filecmp.dircmp(tmp_path / "0.0" / "images" / SFT_DATASET, tmp_path / "0.5" / "images" / SFT_DATASET)
    assert len(same_images.same_files) == 200 and not same_images.diff_files
    with pytest.raises(ValueError, match="noisy_share must be a share in \\[0, 1\\]"):
        write_sft_dataset(tmp_path, n_examples=1, noisy_share=1.5)


def test_tiny_gemma3_has_a_random_image_projection_so_images_reach_its_language_model(tiny_gemma3_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_gemma3_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tiny_gemma3_dir, local_files_only=True)
    projection = model.model.multi_modal_projector.mm_input_projection_weight  # Gemma 3's own init: all zeros
    assert 0.5 < projection.std().item() / model.config.initializer_range < 1.5
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True,
    )
    last_logits = [
        model(**processor(text=[text], images=[Image.new("RGB", (56, 56), colour)], return_tensors="pt")).logits[0, -1]
        for colour in ("white", "red")
    ]
    assert (last_logits[0] - last_logits[1]).abs().max() > 1e-3


def test_tiny_llama4_has_chunked_and_nope_layers_experts_and_images_reach_its_language_model(tiny_llama4_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llama4_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tiny_llama4_dir, local_files_only=True)
    text_config = model.config.text_config
    assert text_config.layer_types == ["chunked_attention", "full_attention"]
    assert text_config.no_rope_layers == [1, 0]  # the full-attention layer is Llama 4's NoPE layer
    assert (text_config.num_local_experts, text_config.num_experts_per_tok) == (4, 1)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True,
    )
    inputs = [
        processor(text=[text], images=[Image.new("RGB", (56, 28), colour)], return_tensors="pt")
        for colour in ("white", "red")
    ]
    assert inputs[0]["pixel_values"].shape == (3, 3, 28, 28)  # a 1 x 2 canvas and the global tile
    last_logits = [model(**batch).logits[0, -1] for batch in inputs]
    assert (last_logits[0] - last_logits[1]).abs().max() > 1e-3
