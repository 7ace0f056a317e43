"""The `ue_dpo_hf` lmms-eval model in process: checkpoint resolution, prompts, generation kwargs, failures."""

import json
import shutil

import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image

from tiny_training_config import tiny_training_config
from ue_dpo.evaluation.model import CheckpointError, UeDpoHF, resolve_checkpoint
from ue_dpo.synthetic.shapes import CAPTION_PROMPT, PREFERENCE_DATASET

ARCHITECTURES = ("llava", "qwen2_vl")
TILED_ARCHITECTURES = ("internvl", "gemma3")
MOE_ARCHITECTURES = ("qwen3_vl_moe", "glm4v_moe")  # their dense sibling's prompts (GLM-4.5V: LLaMA-Factory's glm4_5v)
QWEN2_VL_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    + "<|image_pad|>" * 4
    + "<|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
)
QWEN3_VL_PROMPT = (  # no default system prompt
    "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>Describe this image.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GLM4V_PROMPT = (
    "[gMASK]<sop><|user|>\n<|begin_of_image|>" + "<|image|>" * 4 + "<|end_of_image|>Describe this image.<|assistant|>"
)
LLAVA_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: " + "<image>" * 4 + "Describe this image. ASSISTANT:"
)
# InternVL: the template's default system prompt, and one tile of 1 token (the processor crops no tiles by default)
INTERNVL_PROMPT = (
    "<|im_start|>system\n你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
    "多模态大语言模型。<|im_end|>\n<|im_start|>user\n<img><IMG_CONTEXT></img>Describe this image.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GEMMA3_PROMPT = (
    "<bos><start_of_turn>user\n\n\n<start_of_image>"
    + "<image_soft_token>" * 4
    + "<end_of_image>\n\nDescribe this image.<end_of_turn>\n<start_of_turn>model\n"
)

# Llama 4: a 56 x 56 image on a 2 x 2 canvas of 28-px tiles (1 token each), rows ended by the y separator, then the
# global tile after `<|image|>`
LLAMA4_TILE_ROW = "<|patch|><|tile_x_separator|><|patch|><|tile_y_separator|>"
LLAMA4_PROMPT = (
    "<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image_start|>"
    + LLAMA4_TILE_ROW * 2
    + "<|image|><|patch|><|image_end|>Describe this image.<|eot|><|header_start|>assistant<|header_end|>\n\n"
)


@pytest.fixture(scope="module")
def models(
    tiny_llava_dir,
    tiny_qwen2_vl_dir,
    tiny_qwen2_5_vl_dir,
    tiny_qwen3_vl_dir,
    tiny_glm4v_dir,
    tiny_internvl_dir,
    tiny_gemma3_dir,
    tiny_qwen3_vl_moe_dir,
    tiny_glm4v_moe_dir,
    tiny_pixtral_dir,
    tiny_qwen3_5_dir,
    tiny_qwen3_5_moe_dir,
    tiny_llama4_dir,
):
    return {
        "llava": UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu"),
        "qwen2_vl": UeDpoHF(pretrained=str(tiny_qwen2_vl_dir), device="cpu"),
        "qwen2_5_vl": UeDpoHF(pretrained=str(tiny_qwen2_5_vl_dir), device="cpu"),
        "qwen3_vl": UeDpoHF(pretrained=str(tiny_qwen3_vl_dir), device="cpu"),
        "glm4v": UeDpoHF(pretrained=str(tiny_glm4v_dir), device="cpu"),
        "internvl": UeDpoHF(pretrained=str(tiny_internvl_dir), device="cpu"),
        "gemma3": UeDpoHF(pretrained=str(tiny_gemma3_dir), device="cpu"),
        "qwen3_vl_moe": UeDpoHF(pretrained=str(tiny_qwen3_vl_moe_dir), device="cpu"),
        "glm4v_moe": UeDpoHF(pretrained=str(tiny_glm4v_moe_dir), device="cpu"),
        "pixtral": UeDpoHF(pretrained=str(tiny_pixtral_dir), device="cpu"),  # Pixtral-12B: a `llava` model
        "qwen3_5": UeDpoHF(pretrained=str(tiny_qwen3_5_dir), device="cpu"),
        "qwen3_5_moe": UeDpoHF(pretrained=str(tiny_qwen3_5_moe_dir), device="cpu"),
        "llama4": UeDpoHF(pretrained=str(tiny_llama4_dir), device="cpu"),
    }


@pytest.fixture(scope="module")
def images(shapes_dataset_dir):
    records = json.loads((shapes_dataset_dir / f"{PREFERENCE_DATASET}.json").read_text())
    return [Image.open(shapes_dataset_dir / record["images"][0]).convert("RGB") for record in records[:3]]


def llamafactory_training_prompt(arch, model_dir, dataset_dir, tmp_path) -> list[int]:
    """The prompt ids of the first `shapes_pref` pair, as LLaMA-Factory's DPO data pipeline tokenises it."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    config = tiny_training_config(arch, model_dir, dataset_dir, tmp_path / "out", stage="dpo")
    model_args, data_args, training_args, _, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    row = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)["train_dataset"][
        0
    ]
    response_start = next(i for i, label in enumerate(row["chosen_labels"]) if label != IGNORE_INDEX)
    return row["chosen_input_ids"][:response_start]


@pytest.mark.parametrize(
    "arch", [*ARCHITECTURES, "qwen3_vl", "glm4v", *TILED_ARCHITECTURES, *MOE_ARCHITECTURES, "llama4"]
)
def test_evaluation_prompt_is_the_training_prompt(arch, models, images, request, shapes_dataset_dir, tmp_path):
    model = models[arch]
    prompt = model.encode_prompt(CAPTION_PROMPT, images[:1])
    assert prompt == llamafactory_training_prompt(
        arch, request.getfixturevalue(f"tiny_{arch}_dir"), shapes_dataset_dir, tmp_path
    )
    expected_text = {
        "llava": LLAVA_PROMPT,
        "qwen2_vl": QWEN2_VL_PROMPT,
        "qwen3_vl": QWEN3_VL_PROMPT,
        "glm4v": GLM4V_PROMPT,
        "internvl": INTERNVL_PROMPT,
        "gemma3": GEMMA3_PROMPT,
        "qwen3_vl_moe": QWEN3_VL_PROMPT,
        "glm4v_moe": GLM4V_PROMPT,
        "llama4": LLAMA4_PROMPT,
    }[arch]
    assert model.tokenizer.decode(prompt) == expected_text


def test_qwen2_5_vl_is_prompted_with_the_qwen2_vl_template(models, images):
    model = models["qwen2_5_vl"]
    assert model.template_name == "qwen2_vl"
    assert models["pixtral"].template_name == "pixtral"  # by its vision tower, not its model type (`llava`)
    assert model.tokenizer.decode(model.encode_prompt(CAPTION_PROMPT, images[:1])) == QWEN2_VL_PROMPT


@pytest.mark.parametrize(
    "arch",
    [
        *ARCHITECTURES,
        "qwen2_5_vl",
        "qwen3_vl",
        "glm4v",
        *TILED_ARCHITECTURES,
        *MOE_ARCHITECTURES,
        "pixtral",
        "qwen3_5",
        "qwen3_5_moe",
        "llama4",
    ],
)
def test_generation_sees_the_positions_of_a_training_forward(arch, models, images):
    """The first generated step must score like a plain forward pass (Qwen: M-RoPE over the image grid)."""
    model = models[arch]
    inputs = model.model_inputs([(CAPTION_PROMPT, images[:1]), ("What is in the picture?", images[1:2])])
    if arch.startswith("qwen"):
        assert inputs["mm_token_type_ids"].sum(dim=1).tolist() == [4, 4]
    if arch == "gemma3":  # each left-padded row marks its own image tokens, where input_ids holds them
        is_image = inputs["input_ids"] == model.model.config.image_token_id
        assert torch.equal(inputs["token_type_ids"].bool(), is_image) and is_image.any(dim=1).all()
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


def test_the_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    assert get_model("ue_dpo_hf") is UeDpoHF


def save_random_lora_adapter(base_dir, out_dir, *, with_processor: bool):
    """A LoRA dir as LLaMA-Factory writes one (adapter + processor files), with non-zero B matrices."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)", init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out_dir)
    if with_processor:
        AutoProcessor.from_pretrained(base_dir).save_pretrained(out_dir)
    return peft_model.eval()


def test_a_lora_dir_evaluates_as_base_plus_adapter(tiny_qwen2_vl_dir, models, images, tmp_path):
    lora_dir = tmp_path / "lora"
    reference = save_random_lora_adapter(tiny_qwen2_vl_dir, lora_dir, with_processor=True)
    assert resolve_checkpoint(str(lora_dir)) == (str(tiny_qwen2_vl_dir), str(lora_dir), str(lora_dir))
    model = UeDpoHF(pretrained=str(lora_dir), device="cpu")
    inputs = model.model_inputs([(CAPTION_PROMPT, images[:1]), ("What is in the picture?", images[1:2])])
    with torch.inference_mode():
        merged_logits = model.model(**inputs).logits
        adapter_logits = reference(**inputs).logits
        base_logits = models["qwen2_vl"].model(**inputs).logits
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2


def test_checkpoint_resolution_takes_the_processor_from_the_base_when_the_dir_has_none(tiny_llava_dir, tmp_path):
    lora_dir = tmp_path / "lora"
    save_random_lora_adapter(tiny_llava_dir, lora_dir, with_processor=False)
    assert resolve_checkpoint(str(lora_dir)) == (str(tiny_llava_dir), str(lora_dir), str(tiny_llava_dir))
    assert resolve_checkpoint(str(tiny_llava_dir)) == (str(tiny_llava_dir), None, str(tiny_llava_dir))

    moved = tmp_path / "moved_base"
    shutil.copytree(tiny_llava_dir, moved)
    assert resolve_checkpoint(str(lora_dir), str(moved)) == (str(moved), str(lora_dir), str(moved))

    config = json.loads((lora_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (lora_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pass base_model=PATH"):
        resolve_checkpoint(str(lora_dir))
    with pytest.raises(CheckpointError, match="is not a LoRA output dir"):
        resolve_checkpoint(str(tiny_llava_dir), str(moved))


def requests_for(images, gen_kwargs_per_request, contexts=None):
    docs = [{"image": image} for image in images]
    contexts = contexts or [CAPTION_PROMPT] * len(images)
    return [
        Instance(
            request_type="generate_until",
            idx=0,
            arguments=(context, dict(gen_kwargs), lambda doc: [doc["image"]], doc_id, "shapes", "test"),
            metadata={"task": "shapes", "doc_id": doc_id, "repeats": 1},
        )
        for doc_id, (context, gen_kwargs) in enumerate(zip(contexts, gen_kwargs_per_request))
    ], {"shapes": {"test": docs}}


@pytest.mark.parametrize("arch", [*ARCHITECTURES, *TILED_ARCHITECTURES, "qwen3_5"])
def test_batched_generation_equals_one_by_one_and_keeps_request_order(arch, models, images):
    model = models[arch]
    # two kwargs groups, interleaved, so batching regroups and must restore the order
    kwargs = [
        {"max_new_tokens": 8, "until": []},
        {"max_new_tokens": 5, "until": []},
        {"max_new_tokens": 8, "until": []},
    ]
    requests, model.task_dict = requests_for(images, kwargs)
    one_by_one = [model.generate([(CAPTION_PROMPT, [image])], gen) for image, gen in zip(images, kwargs)]
    model.batch_size_per_gpu = 2
    try:
        batched = model.generate_until(requests)
    finally:
        model.batch_size_per_gpu = 1
    assert batched == [answers[0] for answers in one_by_one]


def test_batches_hold_the_longest_prompts_first_and_answers_keep_request_order(models, images, monkeypatch):
    model = models["qwen2_vl"]
    contexts = [
        "Describe this image.",
        "Name every shape in this picture, its colour and where it is.",
        "What shapes are in the picture?",
        "Describe this image in one short sentence, please.",
    ]
    images = [*images, images[0]]
    kwargs = [{"max_new_tokens": 4}, {"max_new_tokens": 4}, {"max_new_tokens": 2}, {"max_new_tokens": 4}]
    requests, model.task_dict = requests_for(images, kwargs, contexts)
    lengths = [len(model.encode_prompt(context, [image])) for context, image in zip(contexts, images)]
    assert len(set(lengths)) == len(lengths)
    batches = []

    def answer_with_the_prompt_length(inputs, gen_kwargs):  # each row's unpadded prompt length stands for its answer
        rows = inputs["attention_mask"].sum(dim=1).tolist()
        batches.append((rows, gen_kwargs["max_new_tokens"]))
        return [str(length) for length in rows]

    monkeypatch.setattr(model, "_generate", answer_with_the_prompt_length)
    monkeypatch.setattr(model, "batch_size_per_gpu", 2)
    assert model.generate_until(requests) == [str(length) for length in lengths]
    # one kwargs group at a time, each sorted longest first, in batches of 2
    four = sorted((lengths[0], lengths[1], lengths[3]), reverse=True)
    assert batches == [(four[:2], 4), (four[2:], 4), ([lengths[2]], 2)]


def test_auto_and_cuda_devices_are_the_local_rank_gpu(monkeypatch):
    from ue_dpo.evaluation import model as model_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert model_module._resolve_device("auto") == torch.device("cuda", 1)
    assert model_module._resolve_device("cuda") == torch.device("cuda", 1)
    assert model_module._resolve_device("cuda:0") == torch.device("cuda", 0)
    assert model_module._resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="local rank 2, but 2 GPU\\(s\\) are visible"):
        model_module._resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK")
    assert model_module._resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device=cuda, but no GPU is visible"):
        model_module._resolve_device("cuda")


def test_generation_kwargs_are_honoured(models, images):
    model = models["qwen2_vl"]
    prompt = [(CAPTION_PROMPT, images[:1])]
    long_answer = model.generate(prompt, {"max_new_tokens": 12})[0]
    short_answer = model.generate(prompt, {"max_new_tokens": 3})[0]
    assert len(model.tokenizer.encode(short_answer)) <= 3 and long_answer.startswith(short_answer)
    stop = long_answer[len(long_answer) // 2 : len(long_answer) // 2 + 2]
    cut = model.generate(prompt, {"max_new_tokens": 12, "until": [stop]})[0]
    assert cut == long_answer.split(stop, 1)[0]
    assert model.generate(prompt, {"max_new_tokens": 12, "num_beams": 2, "until": []})[0]
    with pytest.raises(ValueError, match="needs a temperature > 0"):
        model.generate(prompt, {"do_sample": True, "temperature": 0})
    with pytest.raises(ValueError, match=r"does not support the generation kwargs \['repetition_penalty'\]"):
        model.generate(prompt, {"repetition_penalty": 1.2})


def test_a_generation_error_raises_instead_of_answering_empty(models, images, monkeypatch):
    model = models["llava"]
    requests, model.task_dict = requests_for(images[:1], [{"max_new_tokens": 4}])

    def broken_generate(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="simulated"):
        model.generate_until(requests)


def test_unsupported_requests_and_args_are_refused(models, tiny_llava_dir):
    with pytest.raises(NotImplementedError, match="generate_until only"):
        models["llava"].loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until only"):
        models["llava"].generate_until_multi_round([])
    with pytest.raises(TypeError, match=r"unknown model args \['max_pixels'\]"):
        UeDpoHF(pretrained=str(tiny_llava_dir), max_pixels=100)
    with pytest.raises(ValueError, match="positive integer batch size"):
        UeDpoHF(pretrained=str(tiny_llava_dir), batch_size="auto")
    with pytest.raises(ValueError, match="template 'llava': `crop_to_patches: true` has no effect on LLaVA"):
        UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", crop_to_patches=True)
    with pytest.raises(ValueError, match="crop_to_patches='yes' must be true or false"):
        UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", crop_to_patches="yes")
    with pytest.raises(ValueError, match='default_system="Be "brief"" is quoted but not a JSON string literal'):
        UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", default_system='"Be "brief""')


def test_a_json_quoted_system_prompt_is_decoded_and_a_plain_one_kept(tiny_llava_dir):
    """`ue-dpo run` passes a training's `default_system` as a JSON string literal, whose commas lmms-eval keeps."""
    quoted = UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", default_system='"Be brief, \\"please\\"."')
    assert quoted.template.default_system == 'Be brief, "please".'
    plain = UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", default_system="Be brief.")
    assert plain.template.default_system == "Be brief."


def test_a_given_template_prompts_instead_of_the_familys_once_checked_against_the_model(tiny_llava_dir, images):
    """A LLaVA-architecture model trained with `template: yi_vl` (LlavaPlugin, Yi-VL's system prompt) is evaluated
    with it; a template whose plugin does not lay out the model's images is refused."""
    model = UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", template="yi_vl")
    assert model.template_name == "yi_vl"
    prompt = model.tokenizer.decode(model.encode_prompt(CAPTION_PROMPT, images[:1]))
    assert prompt.startswith("This is a chat between an inquisitive human and an AI assistant.")
    assert prompt.endswith("<image>" * 4 + "Describe this image.\n### Assistant:")
    with pytest.raises(ValueError, match=r"template qwen2_vl for .*does not lay out LLaVA images.*`template: llava`"):
        UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", template="qwen2_vl")
    with pytest.raises(ValueError, match=r"template 'no_such_template' is not one of LLaMA-Factory's templates"):
        UeDpoHF(pretrained=str(tiny_llava_dir), device="cpu", template="no_such_template")


def test_the_answer_of_a_reasoning_template_is_what_follows_its_thought_block(models, images, monkeypatch):
    """`qwen3_vl` trains an empty `<think>` block before each answer: it is generated, and not scored."""
    model = models["qwen3_vl"]
    prompt = [(CAPTION_PROMPT, images[:1])]
    inputs = model.model_inputs(prompt)
    generated = model.tokenizer.encode("<think>\n\n</think>\n\nred circle.\n\nblue", add_special_tokens=False)

    def generate_the_thought_block(**kwargs):
        return torch.cat([inputs["input_ids"], torch.tensor([generated])], dim=1)

    monkeypatch.setattr(model.model, "generate", generate_the_thought_block)
    assert model.generate(prompt, {"max_new_tokens": 32, "until": ["\n\n"]}) == ["red circle."]
