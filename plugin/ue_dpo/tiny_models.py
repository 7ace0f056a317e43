"""Tiny random-weight LLaVA and Qwen2-VL checkpoints built locally: no downloads.

Real config, model, tokenizer and processor classes, so LLaMA-Factory's `llava` and `qwen2_vl`
templates and lmms-eval load them exactly as they load the released checkpoints.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ue_dpo.shapes import COLOURS, SHAPES

ARCHITECTURES = ("llava", "qwen2_vl")
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_PROMPT_WORDS = (
    "system user assistant USER ASSISTANT You are a helpful assistant. A chat between a curious human and an "
    "artificial intelligence assistant. Describe this image. What is in the picture? There is a and the one "
    "two three no yes is are of in on with picture image shape shapes colour"
)


def _corpus() -> list[str]:
    shape_phrases = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
    return [_PROMPT_WORDS, " ".join(shape_phrases), *[f"There is {phrase}." for phrase in shape_phrases]] * 4


def _byte_level_bpe(special_tokens: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def build_tiny_qwen2_vl(out_dir: Path, *, seed: int = 0) -> Path:
    from transformers import (
        Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_byte_level_bpe(QWEN_SPECIAL_TOKENS, 400),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
    )
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "eos_token_id": token_id("<|im_end|>"),
        },
        vision_config={
            "depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3,
        },
        image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out_dir)
    # 56x56 images: a 4x4 patch grid, merged 2x2 into 4 visual tokens
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava(out_dir: Path, *, seed: int = 0) -> Path:
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlamaTokenizerFast, LlavaConfig,
        LlavaForConditionalGeneration, LlavaProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=_byte_level_bpe(LLAVA_SPECIAL_TOKENS, 400),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True,
        add_eos_token=False, legacy=False,
    )
    token_id = tokenizer.convert_tokens_to_ids
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=token_id("<s>"), eos_token_id=token_id("</s>"), pad_token_id=token_id("<pad>"),
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
            patch_size=14, projection_dim=32,
        ),
        image_token_index=token_id("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>", chat_template=_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_tiny_model(arch: str, out_dir: Path, *, seed: int = 0) -> Path:
    builders = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl}
    if arch not in builders:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of: {', '.join(ARCHITECTURES)}")
    return builders[arch](out_dir, seed=seed)
