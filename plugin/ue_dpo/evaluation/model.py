"""`ue_dpo_hf`: an lmms-eval model for checkpoints trained with LLaMA-Factory (LoRA output dirs included).

`pretrained` is a LoRA output dir (it has `adapter_config.json`: the base model named there is loaded and
the adapter merged into it with peft), a merged/full output dir, or a base model. Prompts are encoded
with LLaMA-Factory's own chat template and multimodal plugin, so evaluation sees byte for byte the prompt format
of training: the `template` model arg (checked against the model as the stage checks a training template, e.g.
`qwen3_vl_nothink` for a Qwen3-VL model trained with it), else the template the stage trains the model's family
with (`llava` for LLaVA-1.5, `qwen2_vl` for Qwen2-VL and Qwen2.5-VL, `pixtral` for Pixtral-12B: README's table).

    lmms-eval --model ue_dpo_hf --model_args pretrained=saves/ue_dpo --tasks shapes_caption

Model args: pretrained, base_model (overrides the adapter's base path), device (auto: cuda when
available, else cpu; `auto` and `cuda` are the process's local GPU, cuda:LOCAL_RANK, so every rank of a
`torchrun`/`accelerate launch` run has its own; `cuda:N` pins every rank to GPU N), dtype (auto: float32 on
cpu, bfloat16 on cuda), default_system (as LLaMA-Factory's key, if training set it; a JSON string literal,
`"..."`, is decoded, so that a system prompt with commas passes lmms-eval's model-args parser), image_max_pixels /
image_min_pixels / crop_to_patches (LLaMA-Factory's keys and defaults; crop_to_patches InternVL's, refused for a
template whose plugin does not read it), attn_implementation, template. The batch size is lmms-eval's
`--batch_size N`: requests with the same generation kwargs are generated together, longest prompt (image
tokens included) first so that a batch holds prompts of similar length, left-padded, and the answers are
returned in the requests' order (lmms-eval's Collator, as its own models do).
"""

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator
from PIL import Image
from tqdm import tqdm

from ue_dpo.evaluation.chat import crop_to_patches_kwargs, model_template, training_prompt_ids
from ue_dpo.evaluation.model_settings import (
    DEFAULT_IMAGE_MAX_PIXELS,
    DEFAULT_IMAGE_MIN_PIXELS,
    UE_DPO_HF_GENERATION_KWARGS,
)
from ue_dpo.model_paths import is_local_path

MODEL_NAME = "ue_dpo_hf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_NEW_TOKENS = 1024
GENERATION_KWARGS = UE_DPO_HF_GENERATION_KWARGS
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(pretrained: str, base_model: str | None = None) -> tuple[str, str | None, str]:
    """(base model, adapter dir or None, processor source) for a LoRA dir, a merged dir or a base model.

    The processor comes from the adapter dir when LLaMA-Factory saved one there (it does), else from the base.
    """
    adapter_config_path = Path(pretrained) / "adapter_config.json"
    if not adapter_config_path.is_file():
        if base_model is not None:
            raise CheckpointError(
                f"base_model={base_model} was given, but {pretrained} is not a LoRA output dir "
                f"(no adapter_config.json); drop base_model to evaluate {pretrained} itself"
            )
        return pretrained, None, pretrained
    adapter_config = json.loads(adapter_config_path.read_text())
    if adapter_config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{adapter_config_path}: peft_type {adapter_config.get('peft_type')!r} is not supported; "
            f"ue_dpo_hf loads LoRA adapters (LLaMA-Factory's finetuning_type: lora)"
        )
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{adapter_config_path} names no base_model_name_or_path; pass base_model=PATH")
    if is_local_path(base) and not Path(base).exists():
        raise CheckpointError(
            f"the base model {base} of the adapter {pretrained} does not exist (the path comes from "
            f"{'base_model=' if base_model else adapter_config_path}); pass base_model=PATH to "
            f"where the base model is now"
        )
    has_processor = any((Path(pretrained) / name).is_file() for name in _PROCESSOR_FILES)
    return base, pretrained, pretrained if has_processor else base


def _resolve_device(device: str) -> torch.device:
    """`auto` and `cuda` are this process's local GPU (LOCAL_RANK, set by torchrun and accelerate launch)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.cuda.is_available():
        raise ValueError(f"{MODEL_NAME}: device=cuda, but no GPU is visible; use device=cpu or device=auto")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"{MODEL_NAME}: this is local rank {local_rank}, but {torch.cuda.device_count()} GPU(s) are "
            f"visible; start at most one process per GPU, or pin the device with device=cuda:N"
        )
    return torch.device("cuda", local_rank)


def _system_prompt(value: Any) -> str | None:
    """`default_system` as given, or decoded from the JSON string literal `ue-dpo run` passes (lmms-eval splits its
    model args at commas outside quotes and keeps the quotes)."""
    if isinstance(value, str) and len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{MODEL_NAME}: default_system={value} is quoted but not a JSON string literal") from None
    return None if value is None else str(value)


def _flag(name: str, value: Any) -> bool:
    """A boolean model arg: lmms-eval turns `true`/`false` into booleans; anything else is refused."""
    if not isinstance(value, bool):
        raise ValueError(f"{MODEL_NAME}: {name}={value!r} must be true or false")
    return value


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class UeDpoHF(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str,
        base_model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        default_system: str | None = None,
        image_max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS,
        image_min_pixels: int = DEFAULT_IMAGE_MIN_PIXELS,
        attn_implementation: str | None = None,
        template: str | None = None,
        crop_to_patches: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"{MODEL_NAME} got unknown model args {sorted(unknown)}; its args are pretrained, "
                f"base_model, device, dtype, default_system, image_max_pixels, image_min_pixels, "
                f"attn_implementation, template, crop_to_patches (the batch size is lmms-eval's --batch_size)"
            )
        if str(batch_size).startswith("auto") or int(batch_size) < 1:
            raise ValueError(f"{MODEL_NAME} needs a positive integer batch size, got {batch_size!r}")
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        pretrained = str(pretrained)
        base, adapter_dir, processor_source = resolve_checkpoint(pretrained, base_model)
        self.template_name = model_template(AutoConfig.from_pretrained(base).to_dict(), template, base)
        self._device = _resolve_device(str(device))
        self._dtype = _resolve_dtype(str(dtype), self._device)
        self.batch_size_per_gpu = int(batch_size)

        model = AutoModelForImageTextToText.from_pretrained(
            base, dtype=self._dtype, device_map=str(self._device), attn_implementation=attn_implementation
        )
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        self._model = model.eval()
        self._marks_image_tokens = "mm_token_type_ids" in inspect.signature(model.forward).parameters

        self.processor = AutoProcessor.from_pretrained(processor_source)
        self.processor.image_max_pixels = int(image_max_pixels)
        self.processor.image_min_pixels = int(image_min_pixels)
        self.processor.crop_to_patches = _flag("crop_to_patches", crop_to_patches)  # as LLaMA-Factory sets its key
        crop_to_patches_kwargs(self.template_name, self.processor, crop_to_patches)  # refused where it has no effect
        self._tokenizer = self.processor.tokenizer
        self.template = get_template_and_fix_tokenizer(
            self._tokenizer,
            DataArguments(template=self.template_name, default_system=_system_prompt(default_system)),
        )
        self.stop_token_ids = self.template.get_stop_token_ids(self._tokenizer)
        self.pad_token_id = self._tokenizer.pad_token_id  # the template fix sets one (eos) when missing
        self.pretrained, self.base_model, self.adapter_dir = pretrained, base, adapter_dir

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def encode_prompt(self, context: str, images: Sequence[Image.Image]) -> list[int]:
        """Prompt token ids as LLaMA-Factory encodes a training sample: images as `<image>` before the text."""
        return training_prompt_ids(self.template, self.processor, context, images)

    def model_inputs(self, prompts: Sequence[tuple[str, Sequence[Image.Image]]]) -> dict[str, torch.Tensor]:
        """A left-padded batch of prompts with their images, ready for `generate`."""
        return self.encoded_inputs(
            [self.encode_prompt(context, images) for context, images in prompts], [images for _, images in prompts]
        )

    def encoded_inputs(
        self, prompt_ids: Sequence[list[int]], images_per_row: Sequence[Sequence[Image.Image]]
    ) -> dict[str, torch.Tensor]:
        """`model_inputs` of prompts already encoded by `encode_prompt`."""
        longest = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), longest), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids)
            attention_mask[row, longest - len(ids) :] = 1
        images = [image for row_images in images_per_row for image in row_images]
        count = len(prompt_ids)
        mm_inputs = self.template.mm_plugin.get_mm_inputs(
            images=images,
            videos=[],
            audios=[],
            imglens=[len(row_images) for row_images in images_per_row],
            vidlens=[0] * count,
            audlens=[0] * count,
            batch_ids=prompt_ids,
            processor=self.processor,
        )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **mm_inputs}
        if isinstance(inputs.get("token_type_ids"), list):
            # Gemma 3's plugin marks each row's image tokens in an unpadded list; the rows are left-padded here
            token_type_ids = torch.zeros_like(input_ids)
            for row, marks in enumerate(inputs["token_type_ids"]):
                token_type_ids[row, longest - len(marks) :] = torch.tensor(marks)
            inputs["token_type_ids"] = token_type_ids
        if self._marks_image_tokens:
            # Qwen2-VL's M-RoPE positions need the image tokens marked, as LLaMA-Factory's collator marks them in
            # training; without them transformers falls back to text positions for the image.
            inputs["mm_token_type_ids"] = (input_ids == self._model.config.image_token_id).long()
        return {
            name: value.to(self._device, self._dtype if value.is_floating_point() else None)
            if isinstance(value, torch.Tensor)
            else value
            for name, value in inputs.items()
        }

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        unknown = set(gen_kwargs).difference(GENERATION_KWARGS)
        if unknown:
            raise ValueError(
                f"{MODEL_NAME} does not support the generation kwargs {sorted(unknown)}; "
                f"supported: {', '.join(GENERATION_KWARGS)}"
            )
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        temperature = float(gen_kwargs.get("temperature", 0.0))
        do_sample = bool(gen_kwargs.get("do_sample", temperature > 0))
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            "num_beams": int(gen_kwargs.get("num_beams", 1)),
            "do_sample": do_sample,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.pad_token_id,
        }
        if do_sample:
            if temperature <= 0:
                raise ValueError(f"do_sample=true needs a temperature > 0, got temperature={temperature}")
            settings.update(
                temperature=temperature,
                top_p=float(gen_kwargs.get("top_p", 1.0)),
                top_k=int(gen_kwargs.get("top_k", 0)),
            )
        else:
            # greedy/beam search: neutralise sampling defaults a checkpoint's generation_config may carry
            settings.update(temperature=None, top_p=None, top_k=None)
        return settings, list(until)

    def generate(self, prompts: Sequence[tuple[str, Sequence[Image.Image]]], gen_kwargs: dict[str, Any]) -> list[str]:
        return self._generate(self.model_inputs(prompts), gen_kwargs)

    def _generate(self, inputs: dict[str, torch.Tensor], gen_kwargs: dict[str, Any]) -> list[str]:
        settings, until = self._generation_settings(gen_kwargs)
        with torch.inference_mode():
            output_ids = self._model.generate(**inputs, **settings)
        texts = self._tokenizer.batch_decode(output_ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # the answer is what follows a reasoning template's thought block (`<think>`…`</think>`, left in by
        # skip_special_tokens), as lmms-eval's own Qwen3-VL model scores it; an unclosed block stays in the answer
        return [_cut_at_stop_strings(self.template.remove_thought(text), until) for text in texts]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # Every prompt is encoded once, up front, for its length; the images are loaded again batch by batch.
        prompt_ids = [self.encode_prompt(*self._request_prompt(request)) for request in requests]
        batches = Collator(
            list(range(len(requests))),
            sort_fn=lambda index: -len(prompt_ids[index]),
            group_fn=lambda index: requests[index].args[1],
            grouping=True,
        )
        answers: list[str] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="ue_dpo_hf responding")
        for batch in batches.get_batched(n=self.batch_size_per_gpu):
            inputs = self.encoded_inputs(
                [prompt_ids[index] for index in batch], [self._request_prompt(requests[index])[1] for index in batch]
            )
            answers.extend(self._generate(inputs, dict(requests[batch[0]].args[1])))
            progress.update(len(batch))
        progress.close()
        return batches.get_original(answers)

    def _request_prompt(self, request: Instance) -> tuple[str, list[Image.Image]]:
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise NotImplementedError(
                    f"{MODEL_NAME} takes images only; task {task} doc {doc_id} gave a {type(visual).__name__} visual"
                )
            images.append(visual.convert("RGB"))
        return context, images

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            f"{MODEL_NAME} implements generate_until only; this task asks for loglikelihood "
            f"(multiple-choice scoring): use a generative task or lmms-eval's llava_hf / "
            f"qwen2_5_vl on a merged checkpoint"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_NAME} implements generate_until only; multi-round generation is not supported"
        )


def _cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def lmms_eval_manifests():
    """The `lmms_eval.models` entry point: lmms-eval resolves `--model ue_dpo_hf` through it."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(MODEL_NAME, simple_class_path=f"{__name__}.UeDpoHF")]
