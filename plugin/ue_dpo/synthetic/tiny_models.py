"""Tiny random-weight LLaVA-1.5, Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, Mistral-Small-3, Pixtral, Qwen3-VL, Qwen3.5,
GLM-4.1V, InternVL 3 and Gemma 3 checkpoints, and the mixture-of-experts Qwen3-VL (30B-A3B), Qwen3.5 (35B-A3B),
GLM-4.5V and Llama 4, built locally without any download.

They use the real config, model, tokenizer and processor classes, so LLaMA-Factory's templates (`llava`, `qwen2_vl`,
`llava_next`, `mistral_small`, `pixtral`, `qwen3_vl`, `qwen3_5`, `glm4v`, `glm4_5v`, `intern_vl`, `gemma3`, `llama4`),
`AutoProcessor` and `AutoModelForImageTextToText` load them exactly as they load the released checkpoints. LLaVA,
Qwen2-VL, Qwen3-VL, Qwen3.5 and GLM-4.xV see an image as a 2x2 grid of visual tokens, one per quadrant
of a shapes image (see `ue_dpo.synthetic.shapes`); LLaVA-NeXT adds its grid of high-resolution patches,
Mistral-Small-3 sees each image at its own size, InternVL cuts it into 28-px tiles of one token each (with
`crop_to_patches`), Gemma 3 pools it into 4 tokens and Llama 4 cuts it into 28-px tiles of a padded canvas of at most 4,
plus a global tile, of one token each. The mixture-of-experts models are their dense sibling's
layout with 4 experts per mixture, 2 routed to per token (Llama 4, which has no dense sibling: 1, beside its shared
expert).

Every builder takes the shapes as arguments, each defaulting to the tiny one: `text` and `vision` (fields of the
language model's and the vision tower's config: width, layers, heads, MLP width, ...), `vocab_size` (output-layer
entries; ids past the tokenizer's are never targets, as in the released models), `image_size` (pixels per side,
which sets the image tokens: one per 14-px patch for LLaVA, one per 28-px square for Qwen2-VL and GLM-4.1V, one per
32-px square for Qwen3-VL) and `device` /
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
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ue_dpo.synthetic.shapes import CAPTION_PROMPT, COLOURS, SHAPES

ARCHITECTURES = (
    "llava",
    "qwen2_vl",
    "llava_next",
    "mistral3",
    "pixtral",
    "qwen3_vl",
    "qwen3_5",
    "glm4v",
    "internvl",
    "gemma3",
    "qwen3_vl_moe",
    "qwen3_5_moe",
    "glm4v_moe",
    "llama4",
)

TEXT_HIDDEN_SIZE = 64
LLAVA_IMAGE_SIZE = 28
MISTRAL3_IMAGE_SIZE = 56
QWEN2_VL_IMAGE_SIZE = 56
QWEN3_VL_IMAGE_SIZE = 64
INTERNVL_TILE_SIZE = 28
GEMMA3_IMAGE_SIZE = 56
LLAMA4_TILE_SIZE = 28
LLAMA4_ATTENTION_CHUNK = 32
GEMMA3_SLIDING_WINDOW = 64
VISION_PATCH_SIZE = 14
QWEN3_VL_PATCH_SIZE = 16
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
# `out_hidden_size` defaults to the language model's width; a deepstack merger after each block, as the released
# models inject three of their blocks' features into the first three decoder layers
TINY_QWEN3_VL_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 16,
    "deepstack_visual_indexes": [0, 1],
}
# Qwen3.5's Gated DeltaNet layers, then its full-attention ones
TINY_QWEN3_5_LINEAR_ATTENTION = {
    "layer_types": ["linear_attention", "full_attention"],
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
}
# The mixture-of-experts language models: 4 experts of half the dense MLP's width, 2 routed to per token (the
# released ones route to 8 of 128 to 512)
TINY_QWEN3_VL_MOE_EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": TEXT_HIDDEN_SIZE // 2}
# Qwen3.5's also add a shared expert to every token, behind a sigmoid gate
TINY_QWEN3_5_MOE_EXPERTS = {**TINY_QWEN3_VL_MOE_EXPERTS, "shared_expert_intermediate_size": TEXT_HIDDEN_SIZE // 2}
# GLM-4.5V's: the first layer dense, then sigmoid-scored routing in one group, beside one shared expert
TINY_GLM4V_MOE_EXPERTS = {
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "moe_intermediate_size": TEXT_HIDDEN_SIZE // 2,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
}
# `out_hidden_size` defaults to the language model's width
TINY_GLM4V_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}

TINY_INTERNVL_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}

LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_PAD_TOKEN = "<pad>"
PIXTRAL_IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
# The control tokens of the released tekken tokenizers (Pixtral-12B, Mistral-Small-3.1) that the chat templates use
MISTRAL_CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<pad>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
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
# Qwen3's reasoning markers, plain (not special) added tokens after Qwen2-VL's, as in the released tokenizer
QWEN3_THINK_TOKENS = ("<think>", "</think>")
# The added tokens of the released GLM-4.1V tokenizer that its chat template and LLaMA-Factory's `glm4v` template use
GLM4V_ADDED_TOKENS = (
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
)
GLM4V_TEXT_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

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


def _llama_tokenizer():
    """A SentencePiece-style BPE like Llama's (LLaVA's): `▁` word prefix, `<0xNN>` byte fallback at ids 3-258; the
    image token and `<pad>` after the vocab."""
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
            for offset, token in enumerate((LLAVA_IMAGE_TOKEN, LLAVA_PAD_TOKEN))
        },
    )


def _byte_level_bpe(special_tokens: tuple[str, ...], plain_tokens: tuple[str, ...] = ()):
    """A byte-level BPE split by Qwen2's pre-tokenizer regex (GLM-4's is the same split), trained on the corpus, and
    the added tokens after its vocab: `(bpe, vocab, merges, added_tokens_decoder)`."""
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
    added = [(token, True) for token in special_tokens] + [(token, False) for token in plain_tokens]
    added_tokens_decoder = {
        len(vocab) + offset: AddedToken(token, special=special, normalized=False)
        for offset, (token, special) in enumerate(added)
    }
    return bpe, vocab, merges, added_tokens_decoder


def _byte_level_tokenizer(
    special_tokens: tuple[str, ...], plain_tokens: tuple[str, ...] = (), *, prepend_bos: bool = False, **token_names
):
    """The byte-level BPE (`_byte_level_bpe`) as the generic tokenizers-backed class, decoding bytes, with its
    `token_names` (`bos_token=`, `eos_token=`, ...); `prepend_bos`: the BOS in front of every encoded text."""
    from transformers import PreTrainedTokenizerFast

    bpe, _, _, added_tokens_decoder = _byte_level_bpe(special_tokens, plain_tokens)
    bpe.decoder = decoders.ByteLevel()
    if prepend_bos:
        bos = token_names["bos_token"]
        bos_id = next(index for index, token in added_tokens_decoder.items() if token.content == bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder=added_tokens_decoder,
        **token_names,
    )


def _tekken_tokenizer():
    """A byte-level BPE like the Hugging Face conversion of Mistral's tekken tokenizer (Pixtral-12B,
    Mistral-Small-3.1): no word prefix, the chat and image tokens special, `<s>` added in front of an encoded text."""
    return _byte_level_tokenizer(
        (*MISTRAL_CONTROL_TOKENS, *PIXTRAL_IMAGE_TOKENS),
        prepend_bos=True,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def _qwen2_tokenizer(plain_tokens: tuple[str, ...] = (), tokenizer_class=None):
    """Qwen2's tokenizer (or `tokenizer_class`, Qwen3.5's) with Qwen2-VL's added tokens (and `plain_tokens` after
    them)."""
    from transformers import Qwen2TokenizerFast

    _, vocab, merges, added_tokens_decoder = _byte_level_bpe(QWEN2_VL_ADDED_TOKENS, plain_tokens)
    return (tokenizer_class or Qwen2TokenizerFast)(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder=added_tokens_decoder,
    )


def _glm4v_tokenizer():
    """GLM-4.1V's tokenizer: the generic tokenizers-backed class, `<|endoftext|>` ending and padding."""
    return _byte_level_tokenizer(
        GLM4V_ADDED_TOKENS, GLM4V_TEXT_TOKENS, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
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
    redrawn: tuple[str, ...] = (),
) -> None:
    """`redrawn`: parameters the model's own initialisation sets to zeros, drawn from N(0, initializer_range²)."""
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
        with torch.no_grad():
            for name in redrawn:
                model.get_parameter(name).normal_(std=config.initializer_range)
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
    tokenizer = _tekken_tokenizer()
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
    tokenizer = _tekken_tokenizer()
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


def build_tiny_qwen3_vl(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN3_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen3-VL checkpoint: 16-px patches, images resized to 64x64, a 4x4 patch grid merged into 4 visual tokens,
    deepstack features of both vision blocks added in the first two decoder layers; interleaved M-RoPE.

    `text`: Qwen3VLTextConfig fields over TINY_TEXT; `vision`: Qwen3VLVisionConfig fields over TINY_QWEN3_VL_VISION.
    The processor is Qwen3VLProcessor with Qwen2-VL's image processor (as the released one) and Qwen3-VL's video
    processor, whose `merge_size` LLaMA-Factory's qwen3_vl plugin reads for still images too."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = _qwen2_tokenizer(plain_tokens=QWEN3_THINK_TOKENS)
    return _save_qwen3_vl_layout(
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        tokenizer,
        Path(out_dir),
        text=dict(text or {}),
        vision={**TINY_QWEN3_VL_VISION, **(vision or {})},
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def build_tiny_qwen3_vl_moe(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN3_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen3-VL mixture-of-experts checkpoint (Qwen3-VL-30B-A3B, 235B-A22B): Qwen3-VL's vision tower, deepstack,
    processor and positions, every decoder layer's MLP a mixture of experts (TINY_QWEN3_VL_MOE_EXPERTS).

    `text`: Qwen3VLMoeTextConfig fields over TINY_TEXT and TINY_QWEN3_VL_MOE_EXPERTS; `vision`:
    Qwen3VLMoeVisionConfig fields over TINY_QWEN3_VL_VISION."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    return _save_qwen3_vl_layout(
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        _qwen2_tokenizer(plain_tokens=QWEN3_THINK_TOKENS),
        Path(out_dir),
        text={**TINY_QWEN3_VL_MOE_EXPERTS, **(text or {})},
        vision={**TINY_QWEN3_VL_VISION, **(vision or {})},
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def _save_qwen3_vl_layout(
    config_class, model_class, tokenizer, out_dir: Path, *, text, vision, vocab_size, image_size, seed, device, dtype
) -> Path:
    """A checkpoint of Qwen3-VL's layout (Qwen3-VL, Qwen3.5): interleaved M-RoPE, 16-px patches, its processor."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    text_config, token_ids = _qwen_text_and_token_config(tokenizer, text, vocab_size)
    text_config.setdefault("head_dim", text_config["hidden_size"] // text_config["num_attention_heads"])
    text_config["rope_parameters"] = {**text_config["rope_parameters"], "mrope_interleaved": True}
    vision_config = {"patch_size": QWEN3_VL_PATCH_SIZE, "out_hidden_size": text_config["hidden_size"], **vision}
    config = config_class(text_config=text_config, vision_config=vision_config, **token_ids)
    _save_random_model(model_class, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    pixels = {"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size}
    half = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": QWEN3_VL_PATCH_SIZE}
    Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(pixels), **half),
        video_processor=Qwen3VLVideoProcessor(size=dict(pixels), **half),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen3_5(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN3_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen3.5 checkpoint: Qwen3-VL's vision tower (no deepstack) and processor, and a hybrid language model whose
    first layer is a Gated DeltaNet (linear attention) and second full attention, as the released models alternate.

    `text`: Qwen3_5TextConfig fields over TINY_TEXT and TINY_QWEN3_5_LINEAR_ATTENTION; `vision`: Qwen3_5VisionConfig
    fields over TINY_QWEN3_VL_VISION."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5Tokenizer

    tokenizer = _qwen2_tokenizer(plain_tokens=QWEN3_THINK_TOKENS, tokenizer_class=Qwen3_5Tokenizer)
    vision_config = {key: value for key, value in TINY_QWEN3_VL_VISION.items() if key != "deepstack_visual_indexes"}
    return _save_qwen3_vl_layout(
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        tokenizer,
        Path(out_dir),
        text={**TINY_QWEN3_5_LINEAR_ATTENTION, **(text or {})},
        vision={**vision_config, **(vision or {})},
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def build_tiny_qwen3_5_moe(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = QWEN3_VL_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Qwen3.5 mixture-of-experts checkpoint (Qwen3.5-35B-A3B and larger): Qwen3.5's vision tower, processor and
    hybrid layers (a Gated DeltaNet, then full attention), each layer's MLP a mixture of experts beside a gated shared
    expert (TINY_QWEN3_5_MOE_EXPERTS).

    `text`: Qwen3_5MoeTextConfig fields over TINY_TEXT, TINY_QWEN3_5_LINEAR_ATTENTION and TINY_QWEN3_5_MOE_EXPERTS;
    `vision`: Qwen3_5MoeVisionConfig fields over TINY_QWEN3_VL_VISION."""
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, Qwen3_5Tokenizer

    tokenizer = _qwen2_tokenizer(plain_tokens=QWEN3_THINK_TOKENS, tokenizer_class=Qwen3_5Tokenizer)
    vision_config = {key: value for key, value in TINY_QWEN3_VL_VISION.items() if key != "deepstack_visual_indexes"}
    return _save_qwen3_vl_layout(
        Qwen3_5MoeConfig,
        Qwen3_5MoeForConditionalGeneration,
        tokenizer,
        Path(out_dir),
        text={**TINY_QWEN3_5_LINEAR_ATTENTION, **TINY_QWEN3_5_MOE_EXPERTS, **(text or {})},
        vision={**vision_config, **(vision or {})},
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def build_tiny_glm4v(
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
    """A GLM-4.1V checkpoint: 14-px patches, images resized to 56x56, a 4x4 patch grid merged into 4 visual tokens;
    M-RoPE on half of each head (partial_rotary_factor 0.5, sections 1:1.5:1.5 as the released 8:12:12).

    `text`: Glm4vTextConfig fields over TINY_TEXT; `vision`: Glm4vVisionConfig fields over TINY_GLM4V_VISION."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    return _save_glm4v_layout(
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Path(out_dir),
        text=dict(text or {}),
        vision=dict(vision or {}),
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def build_tiny_glm4v_moe(
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
    """A GLM-4.5V (and GLM-4.6V) checkpoint: GLM-4.1V's vision tower, processor and positions, and a language model
    whose first layer is dense and second a mixture of experts (`first_k_dense_replace` 1, as released), routed by
    sigmoid scores to 2 of 4 experts beside a shared one.

    `text`: Glm4vMoeTextConfig fields over TINY_TEXT and TINY_GLM4V_MOE_EXPERTS; `vision`: Glm4vMoeVisionConfig
    fields over TINY_GLM4V_VISION."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    return _save_glm4v_layout(
        Glm4vMoeConfig,
        Glm4vMoeForConditionalGeneration,
        Path(out_dir),
        text={**TINY_GLM4V_MOE_EXPERTS, **(text or {})},
        vision=dict(vision or {}),
        vocab_size=vocab_size,
        image_size=image_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def _save_glm4v_layout(
    config_class, model_class, out_dir: Path, *, text, vision, vocab_size, image_size, seed, device, dtype
) -> Path:
    """A checkpoint of GLM-4.1V's layout (GLM-4.1V, GLM-4.5V): its tokenizer, M-RoPE on half of each head, 14-px
    patches and its processor."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    tokenizer = _glm4v_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    shape = {**TINY_TEXT, **text}
    rotary_half = shape["hidden_size"] // shape["num_attention_heads"] // 4
    mrope_section = [rotary_half // 4, 3 * rotary_half // 8, rotary_half - rotary_half // 4 - 3 * rotary_half // 8]
    config = config_class(
        text_config={
            **shape,
            "vocab_size": _vocab_size(tokenizer, vocab_size),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": mrope_section,
            },
            **_special_token_ids(tokenizer),
        },
        vision_config={
            **TINY_GLM4V_VISION,
            "image_size": image_size,
            "patch_size": VISION_PATCH_SIZE,
            "out_hidden_size": shape["hidden_size"],
            **vision,
        },
        image_token_id=token_id("<|image|>"),
        video_token_id=token_id("<|video|>"),
        image_start_token_id=token_id("<|begin_of_image|>"),
        image_end_token_id=token_id("<|end_of_image|>"),
        video_start_token_id=token_id("<|begin_of_video|>"),
        video_end_token_id=token_id("<|end_of_video|>"),
    )
    _save_random_model(model_class, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    # GLM-4.1V's resize bounds count both temporal copies of a still image
    pixels = {"shortest_edge": 2 * image_size * image_size, "longest_edge": 2 * image_size * image_size}
    Glm4vProcessor(
        image_processor=Glm4vImageProcessor(size=dict(pixels), patch_size=VISION_PATCH_SIZE),
        video_processor=Glm4vVideoProcessor(size=dict(pixels), patch_size=VISION_PATCH_SIZE),
        tokenizer=tokenizer,
        chat_template=GLM4V_CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    return out_dir


INTERNVL_ADDED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")


def _internvl_tokenizer():
    """Qwen2's tokenizer with InternVL's added tokens, and the names InternVLProcessor reads them by."""
    from transformers import Qwen2TokenizerFast

    _, vocab, merges, added_tokens_decoder = _byte_level_bpe(INTERNVL_ADDED_TOKENS)
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder=added_tokens_decoder,
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )


def build_tiny_internvl(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = INTERNVL_TILE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """An InternVL-3-hf-style checkpoint: InternViT tiles of `image_size`² (28 px, 14 px patches: a 2x2 patch grid
    that the pixel shuffle (downsample ratio 0.5) turns into 1 image token per tile) + Qwen2.

    `text`: Qwen2Config fields over TINY_TEXT; `vision`: InternVLVisionConfig fields over TINY_INTERNVL_VISION.
    The processor cuts an image into up to 12 tiles plus a thumbnail when LLaMA-Factory's `crop_to_patches` is on,
    else resizes it to one tile."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        Qwen2Config,
    )

    out_dir = Path(out_dir)
    tokenizer = _internvl_tokenizer()
    text_config = Qwen2Config(
        **{**TINY_TEXT, **(text or {})},
        vocab_size=_vocab_size(tokenizer, vocab_size),
        **_special_token_ids(tokenizer),
    )
    vision_config = {
        **TINY_INTERNVL_VISION,
        "image_size": [image_size, image_size],
        "patch_size": [VISION_PATCH_SIZE, VISION_PATCH_SIZE],
        **(vision or {}),
    }
    downsample_ratio = 0.5
    image_seq_length = int((image_size // VISION_PATCH_SIZE) ** 2 * downsample_ratio**2)
    config = InternVLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=False,
    )
    _save_random_model(InternVLForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    size = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=dict(size), crop_to_patches=False),
        video_processor=InternVLVideoProcessor(size=dict(size)),
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}


def _gemma3_tokenizer():
    """A BPE with byte fallback like Gemma's, its special tokens at Gemma's first ids and the turn and image tokens
    after the vocab."""
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_LIMIT,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *byte_tokens],
        show_progress=False,
    )
    vocab, merges = _trained_vocab_and_merges(bpe, trainer)
    added = ("<start_of_turn>", "<end_of_turn>", *GEMMA3_TOKENS.values())
    return GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_POSITIONS,
        added_tokens_decoder={
            len(vocab) + offset: AddedToken(token, special=True, normalized=False) for offset, token in enumerate(added)
        },
        extra_special_tokens=GEMMA3_TOKENS,
    )


def build_tiny_gemma3(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = GEMMA3_IMAGE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Gemma-3-style checkpoint: SigLIP at `image_size`² (56 px, 14 px patches: 4x4 patches pooled into 4 image
    tokens) + Gemma 3's text model, one sliding-window and one global layer. Gemma 3 initialises its image
    projection to zeros, which would keep images out of the language model: here it is drawn at random.

    `text`: Gemma3TextConfig fields over TINY_TEXT; `vision`: SiglipVisionConfig fields over TINY_CLIP_VISION."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    out_dir = Path(out_dir)
    tokenizer = _gemma3_tokenizer()
    shape = {**TINY_TEXT, **(text or {})}
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    tokens_per_image = (image_size // VISION_PATCH_SIZE // 2) ** 2
    config = Gemma3Config(
        text_config={
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": GEMMA3_SLIDING_WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
            **shape,
            "vocab_size": _vocab_size(tokenizer, vocab_size),
            **_special_token_ids(tokenizer),
        },
        vision_config={
            **TINY_CLIP_VISION,
            "image_size": image_size,
            "patch_size": VISION_PATCH_SIZE,
            "vision_use_head": False,
            **(vision or {}),
        },
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_TOKENS["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_TOKENS["eoi_token"]),
        image_token_index=tokenizer.image_token_id,
    )
    _save_random_model(
        Gemma3ForConditionalGeneration,
        config,
        tokenizer,
        out_dir,
        seed,
        device=device,
        dtype=dtype,
        redrawn=("model.multi_modal_projector.mm_input_projection_weight",),
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


LLAMA4_ADDED_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
)


def build_tiny_llama4(
    out_dir: Path,
    *,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    image_size: int = LLAMA4_TILE_SIZE,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Llama-4-Scout-style checkpoint: its vision encoder on tiles of `image_size`² (28 px, 14 px patches: a 2x2
    patch grid that the pixel shuffle turns into 1 image token per tile) + Llama 4's text model, a mixture of 4
    experts (1 routed to per token, beside the shared expert) in each layer, one chunked-attention RoPE layer and one
    full-attention NoPE layer. The processor cuts an image into up to 4 tiles of a padded canvas, plus a global tile.

    Its image processor rescales to [0, 1] and does not normalise: the released one normalises in bfloat16, whose
    pixel values a float32 model does not take (LLaMA-Factory's `stage: dpo` fails on them too).

    `text`: Llama4TextConfig fields over TINY_TEXT; `vision`: Llama4VisionConfig fields over TINY_CLIP_VISION."""
    from transformers import (
        Llama4Config,
        Llama4ForConditionalGeneration,
        Llama4ImageProcessor,
        Llama4Processor,
    )

    out_dir = Path(out_dir)
    tokenizer = _byte_level_tokenizer(
        LLAMA4_ADDED_TOKENS,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
    )
    shape = {**TINY_TEXT, **(text or {})}
    vision_shape = {**TINY_CLIP_VISION, **(vision or {})}
    vision_shape.pop("projection_dim")
    width = vision_shape["hidden_size"]
    config = Llama4Config(
        text_config={
            **shape,
            "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
            "intermediate_size_mlp": shape["intermediate_size"],
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "attention_chunk_size": LLAMA4_ATTENTION_CHUNK,
            "no_rope_layers": [1, 0],
            "layer_types": ["chunked_attention", "full_attention"],
            "vocab_size": _vocab_size(tokenizer, vocab_size),
            **_special_token_ids(tokenizer),
        },
        vision_config={
            **vision_shape,
            "intermediate_size": 4 * width,  # the pixel shuffle's 2x2 patches side by side
            "image_size": image_size,
            "patch_size": VISION_PATCH_SIZE,
            "pixel_shuffle_ratio": 0.5,
            "vision_output_dim": width,
            "projector_input_dim": width,
            "projector_output_dim": width,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|patch|>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<|image_end|>"),
    )
    _save_random_model(Llama4ForConditionalGeneration, config, tokenizer, out_dir, seed, device=device, dtype=dtype)
    processor = Llama4Processor(
        image_processor=Llama4ImageProcessor(
            size={"height": image_size, "width": image_size}, max_patches=4, do_normalize=False
        ),
        tokenizer=tokenizer,
        patch_size=VISION_PATCH_SIZE,
        pixel_shuffle_ratio=0.5,
        chat_template=LLAMA4_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(arch: str, out_dir: Path, *, seed: int = 0, **shapes: Any) -> Path:
    """The tiny builder of an architecture (`ARCHITECTURES`) by name; `shapes` are its keyword arguments."""
    builders = {
        "llava": build_tiny_llava,
        "qwen2_vl": build_tiny_qwen2_vl,
        "llava_next": build_tiny_llava_next,
        "mistral3": build_tiny_mistral3,
        "pixtral": build_tiny_pixtral,
        "qwen3_vl": build_tiny_qwen3_vl,
        "qwen3_5": build_tiny_qwen3_5,
        "glm4v": build_tiny_glm4v,
        "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
        "qwen3_5_moe": build_tiny_qwen3_5_moe,
        "glm4v_moe": build_tiny_glm4v_moe,
        "internvl": build_tiny_internvl,
        "gemma3": build_tiny_gemma3,
        "llama4": build_tiny_llama4,
    }
    if arch not in builders:
        raise ValueError(f"unknown tiny model architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return builders[arch](out_dir, seed=seed, **shapes)


# The chat templates render like the released ones and accept `content` as a string or as a list of parts.
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

# GLM-4.1V's: `[gMASK]<sop>`, then `<|role|>` and a newline before each message; images as begin/end-marked `<|image|>`
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif part['type'] == 'video' or 'video' in part %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# InternVL's: Qwen2's turns, an image part written as the placeholder the processor expands into its tiles
INTERNVL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE.replace(
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}", "{{ '<IMG_CONTEXT>\\n' }}", 1
)

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

LLAMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|image|>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\\n\\n' }}{% endif %}"
)
