"""Tiny random-weight LLaVA-1.5, Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT and Mistral-Small-3 checkpoints, built locally
without any download.

They use the real config, model, tokenizer and processor classes, so LLaMA-Factory's `llava`, `qwen2_vl`,
`llava_next` and `mistral_small` templates, `AutoProcessor` and `AutoModelForImageTextToText` load them exactly as
they load the released checkpoints. LLaVA and Qwen2-VL see an image as a 2x2 grid of visual tokens, one per quadrant
of a shapes image (see `ue_dpo.synthetic.shapes`); LLaVA-NeXT adds its grid of high-resolution patches, and
Mistral-Small-3 sees each image at its own size.

Every builder takes the shapes as arguments, each defaulting to the tiny one: `text` and `vision` (fields of the
language model's and the vision tower's config: width, layers, heads, MLP width, ...), `vocab_size` (output-layer
entries; ids past the tokenizer's are never targets, as in the released models), `image_size` (pixels per side,
which sets the image tokens: one per 14-px patch for LLaVA, one per 28-px square for Qwen2-VL) and `device` /
`dtype` (where the random weights are drawn). `bench/run.py` builds LLaVA-1.5-7B and Qwen2-VL-7B shapes with them.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from ue_dpo.synthetic.shapes import CAPTION_PROMPT, COLOURS, SHAPES

ARCHITECTURES = ("llava", "qwen2_vl", "llava_next", "mistral3", "pixtral")

TEXT_HIDDEN_SIZE = 64
LLAVA_IMAGE_SIZE = 28
MISTRAL3_IMAGE_SIZE = 56
QWEN2_VL_IMAGE_SIZE = 56
VISION_PATCH_SIZE = 14
MAX_POSITIONS = 1024
TOKENIZER_VOCAB_LIMIT = 1024

# The tiny shapes: config fields of the language model (Llama for LLaVA, Qwen2 for Qwen2-VL) and of each vision tower.
TINY_TEXT = {
    "hidden_size": TEXT_HIDDEN_SIZE,
    "intermediate_size": 2 * TEXT_HIDDEN_SIZE,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
}
TINY_CLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}
TINY_PIXTRAL_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "head_dim": 16,
}
# `hidden_size` (the merger's output) defaults to the language model's width
TINY_QWEN2_VL_VISION = {
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 2,
    "mlp_ratio": 2,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# `out_hidden_size` defaults to the language model's width
TINY_QWEN2_5_VL_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 56,
    "fullatt_block_indexes": [1],
}

LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_PAD_TOKEN = "<pad>"
PIXTRAL_IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
# The added tokens of the released Qwen2-VL tokenizer, in their id order.
QWEN2_VL_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_PROMPT_TEXTS = (
    (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    "USER: Describe this image. ASSISTANT: There is a red circle.",
    "system\nYou are a helpful assistant.\nuser\nDescribe this image.\nassistant\nThere is a blue square.\n",
    CAPTION_PROMPT,
    "Describe this image in detail. What is in the picture? How many shapes are there? Answer yes or no.",
    "Is there a green triangle in the image? Yes, there is. No, there is not.",
    "The image shows one, two or three coloured shapes on a white background: 1 2 3 4.",
    "Please answer the question with a single word or phrase. What colour is the star?",
)


def _corpus() -> list[str]:
    objects = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
    captions = [f"There is {first} and {second}." for first, second in zip(objects, reversed(objects))]
    plurals = " ".join(f"{shape}s" for shape in SHAPES)
    return [*_PROMPT_TEXTS, *captions, plurals, ", ".join(objects)]


def _trained_vocab_and_merges(bpe: Tokenizer, trainer: trainers.BpeTrainer) -> tuple[dict, list[tuple[str, str]]]:
    bpe.train_from_iterator(_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _llama_tokenizer(added_tokens: tuple[str, ...] = (LLAVA_IMAGE_TOKEN, LLAVA_PAD_TOKEN)):
    """A SentencePiece-style BPE like Llama's: `▁` word prefix, `<0xNN>` byte fallback at ids 3-258; `added_tokens`
    (the image tokens and `<pad>`) after the vocab."""
    from transformers import LlamaTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_LIMIT, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    vocab, merges = _trained_vocab_and_merges(bpe, trainer)
    return LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=LLAVA_PAD_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder={
            len(vocab) + offset: AddedToken(token, special=True, normalized=False)
            for offset, token in enumerate(added_tokens)
        },
    )


def _qwen2_tokenizer():
    """A byte-level BPE split by Qwen2's pre-tokenizer regex, with Qwen2-VL's added tokens after the vocab."""
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_LIMIT, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    vocab, merges = _trained_vocab_and_merges(bpe, trainer)
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder={
            len(vocab) + offset: AddedToken(token, special=True, normalized=False)
            for offset, token in enumerate(QWEN2_VL_ADDED_TOKENS)
        },
    )


def _special_token_ids(tokenizer) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vocab_size(tokenizer, vocab_size: int | None) -> int:
    if vocab_size is None:
        return len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens; "
            f"pass at least {len(tokenizer)}"
        )
    return vocab_size


def _save_random_model(
    model_class,
    config,
    tokenizer,
    out_dir: Path,
    seed: int,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    # The generation config is derived from the top-level ids on save, and the trainer compares them with the
    # tokenizer's. (Qwen2VLConfig drops top-level ids when loaded, so that trainer still warns; it is harmless.)
    for name, token_id in _special_token_ids(tokenizer).items():
        setattr(config, name, token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if device is None and dtype is None:
            model = model_class(config)
        else:  # e.g. 7B shapes drawn on the GPU in bf16: on the CPU in fp32 they take many minutes
            with torch.device(device or "cpu"):
                model = model_class._from_config(config, dtype=dtype)
    model.save_pretrained(out_dir)
    del model
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def build_tiny_llava(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = LLAVA_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A LLaVA-1.5-style checkpoint: CLIP vision tower (28 px, 14 px patches: 4 image tokens) + Llama.

    `text`: LlamaConfig fields over TINY_TEXT; `vision`: CLIPVisionConfig fields over TINY_CLIP_VISION; the
    tower is cut at its second-to-last layer, with LLaVA's 2-layer GELU projector."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = _llama_tokenizer()
    text_config = LlamaConfig(
        **{**TINY_TEXT, **(text or {})},
        vocab_size=_vocab_size(tokenizer, vocab_size),
        **_special_token_ids(tokenizer),
    )
    vision_config = CLIPVisionConfig(
        **{**TINY_CLIP_VISION, **(vision or {})}, image_size=image_size, patch_size=VISION_PATCH_SIZE
    )
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
        image_seq_length=(image_size // VISION_PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    _save_random_model(LlavaForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # num_additional_image_tokens=1 (CLIP's class token) with the "default" strategy, which drops it again:
    # LLaMA-Factory's llava plugin and LlavaProcessor both expand <image> to exactly the patch count.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=LLAVA_IMAGE_TOKEN,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def _qwen_text_and_token_config(tokenizer, text: Mapping[str, Any] | None, vocab_size: int | None) -> tuple[dict, dict]:
    token_id = tokenizer.convert_tokens_to_ids
    shape = {**TINY_TEXT, **(text or {})}
    half_head_dim = shape["hidden_size"] // shape["num_attention_heads"] // 2
    # The released models split each rotary half 2:3:3 between the temporal, height and width positions.
    mrope_section = [half_head_dim // 4, 3 * half_head_dim // 8, 3 * half_head_dim // 8]
    text_config = {
        "vocab_size": _vocab_size(tokenizer, vocab_size),
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        **shape,
        **_special_token_ids(tokenizer),
    }
    token_ids = {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
    return text_config, token_ids


def _save_qwen2_vl_processor(tokenizer, out_dir: Path, image_size: int) -> None:
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    # Passing `size` (not min_pixels/max_pixels) matters: those two kwargs write into the class-level default
    # `size` dict in transformers 5.6, changing every Qwen2-VL processor created later in the process.
    pixels = {"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(pixels), patch_size=VISION_PATCH_SIZE),
        video_processor=Qwen2VLVideoProcessor(size=dict(pixels), patch_size=VISION_PATCH_SIZE),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)


def build_tiny_qwen2_vl(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN2_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen2-VL-style checkpoint: images are resized to 56x56, a 4x4 patch grid merged into 4 visual tokens.

    `text`: Qwen2VLTextConfig fields over TINY_TEXT (the M-RoPE sections follow its head size unless it sets
    `rope_parameters`); `vision`: Qwen2VLVisionConfig fields over TINY_QWEN2_VL_VISION; the processor keeps
    `image_size`² images whole."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = _qwen2_tokenizer()
    text_config, token_ids = _qwen_text_and_token_config(tokenizer, text, vocab_size)
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config={
            **TINY_QWEN2_VL_VISION,
            "hidden_size": text_config["hidden_size"],
            "patch_size": VISION_PATCH_SIZE,
            **(vision or {}),
        },
        **token_ids,
    )
    _save_random_model(Qwen2VLForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    _save_qwen2_vl_processor(tokenizer, out_dir, image_size)
    return out_dir


def build_tiny_qwen2_5_vl(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN2_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen2.5-VL checkpoint (windowed vision tower, one full-attention block) with the tiny Qwen2-VL's text
    model, tokenizer and processor, as the released Qwen2.5-VL reuses Qwen2-VL's processor.

    `vision`: Qwen2_5_VLVisionConfig fields over TINY_QWEN2_5_VL_VISION; the other shapes as build_tiny_qwen2_vl."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = _qwen2_tokenizer()
    text_config, token_ids = _qwen_text_and_token_config(tokenizer, text, vocab_size)
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={
            **TINY_QWEN2_5_VL_VISION,
            "patch_size": VISION_PATCH_SIZE,
            "out_hidden_size": text_config["hidden_size"],
            **(vision or {}),
        },
        **token_ids,
    )
    _save_random_model(Qwen2_5_VLForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    _save_qwen2_vl_processor(tokenizer, out_dir, image_size)
    return out_dir


def build_tiny_llava_next(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = LLAVA_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A LLaVA-NeXT (v1.6) checkpoint: the tiny LLaVA's CLIP tower and Llama, `image_size`-px patches on a grid of
    1x2, 2x1 or 2x2 patches (the released model's pinpoints scaled down), a base image patch first, and
    `image_newline`. Images of other aspect ratios get other patch counts, padded with zero patches in a batch."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = _llama_tokenizer()
    grid_pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    text_config = LlamaConfig(
        **{**TINY_TEXT, **(text or {})},
        vocab_size=_vocab_size(tokenizer, vocab_size),
        **_special_token_ids(tokenizer),
    )
    vision_config = CLIPVisionConfig(
        **{**TINY_CLIP_VISION, **(vision or {})}, image_size=image_size, patch_size=VISION_PATCH_SIZE
    )
    config = LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
        image_grid_pinpoints=grid_pinpoints,
        image_seq_length=(image_size // VISION_PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    _save_random_model(LlavaNextForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=LLAVA_IMAGE_TOKEN,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_mistral3(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = MISTRAL3_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Mistral-Small-3.1-style checkpoint: a Pixtral vision tower (14-px patches, each image at its own size up to
    `image_size` on its longest edge, in multiples of 28 px), the patch merger (2x2 patches per visual token) and a
    Mistral language model. Images of different sizes are zero-padded to the batch's largest, with `image_sizes`.

    `text`: MistralConfig fields over TINY_TEXT; `vision`: PixtralVisionConfig fields over TINY_PIXTRAL_VISION."""
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralProcessor,
        PixtralVisionConfig,
    )

    out_dir = Path(out_dir)
    tokenizer = _llama_tokenizer((*PIXTRAL_IMAGE_TOKENS, LLAVA_PAD_TOKEN))
    merge = 2
    text_config = MistralConfig(
        **{**TINY_TEXT, **(text or {})},
        vocab_size=_vocab_size(tokenizer, vocab_size),
        **_special_token_ids(tokenizer),
    )
    vision_config = PixtralVisionConfig(
        **{**TINY_PIXTRAL_VISION, **(vision or {})}, image_size=image_size, patch_size=VISION_PATCH_SIZE
    )
    config = Mistral3Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(PIXTRAL_IMAGE_TOKENS[0]),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    _save_random_model(Mistral3ForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    patch = VISION_PATCH_SIZE * merge  # the released processor sizes images in whole merged patches
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(
            size={"longest_edge": image_size}, patch_size={"height": patch, "width": patch}
        ),
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        spatial_merge_size=merge,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_pixtral(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = MISTRAL3_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Pixtral-12B-style checkpoint: a `llava` model with the tiny Mistral-Small-3's Pixtral tower (one visual
    token per 14-px patch, no merger), LLaVA's projector and a Mistral language model; the shapes as
    build_tiny_mistral3."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralProcessor,
        PixtralVisionConfig,
    )

    out_dir = Path(out_dir)
    tokenizer = _llama_tokenizer((*PIXTRAL_IMAGE_TOKENS, LLAVA_PAD_TOKEN))
    text_config = MistralConfig(
        **{**TINY_TEXT, **(text or {})},
        vocab_size=_vocab_size(tokenizer, vocab_size),
        **_special_token_ids(tokenizer),
    )
    vision_config = PixtralVisionConfig(
        **{**TINY_PIXTRAL_VISION, **(vision or {})}, image_size=image_size, patch_size=VISION_PATCH_SIZE
    )
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(PIXTRAL_IMAGE_TOKENS[0]),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
    )
    _save_random_model(LlavaForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(
            size={"longest_edge": image_size},
            patch_size={"height": VISION_PATCH_SIZE, "width": VISION_PATCH_SIZE},
        ),
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(arch: str, out_dir: Path, *, seed: int = 0, **shapes: Any) -> Path:
    """`build_tiny_llava` or `build_tiny_qwen2_vl` by architecture name; `shapes` are their keyword arguments."""
    builders = {
        "llava": build_tiny_llava,
        "qwen2_vl": build_tiny_qwen2_vl,
        "llava_next": build_tiny_llava_next,
        "mistral3": build_tiny_mistral3,
        "pixtral": build_tiny_pixtral,
    }
    if arch not in builders:
        raise ValueError(f"unknown tiny model architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return builders[arch](out_dir, seed=seed, **shapes)


# Both chat templates render like the released ones and accept `content` as a string or as a list of parts.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' or 'video' in part %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '[IMG]' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[/INST]' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
