"""Our tasks under lmms-eval's chat models (`openai`, `vllm`, `sglang`, chat `llava_hf` / `qwen2_5_vl`), with
the prompt LLaMA-Factory's training template builds.

Two halves, which together give a served model the prompt `ue_dpo_hf` encodes:

- `training_messages`: the chat messages of one item, a system turn with the training template's system prompt
  and a user turn with the images before the text (LLaMA-Factory puts `<image>` before the question).
  The template is named by the task setting `template` (metadata) or `UE_DPO_TEMPLATE`: a LLaMA-Factory template
  the stage trains with (`TEMPLATES` are the families' defaults);
  `default_system` / `UE_DPO_DEFAULT_SYSTEM` replaces its system prompt, as LLaMA-Factory's key does.
- `training_chat_template`: a Jinja chat template that renders those messages as the training template does:
  LLaMA-Factory's own Jinja rendering of the template, with each image part rendered as the one placeholder
  the Hugging Face processor expands, as the template's LLaMA-Factory plugin renders it with the model's processor
  (`<image>` for LLaVA, `<|vision_start|><|image_pad|><|vision_end|>` for Qwen2-VL and Qwen3-VL,
  `<|begin_of_image|><|image|><|end_of_image|>` for GLM-4.1V), and no system turn for an empty system prompt.
  `write_training_chat_template` stores it in a model folder, so that a server (vLLM, SGLang, `transformers serve`)
  started on that folder prompts with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ue_dpo.evaluation.data import setting
from ue_dpo.model_families import TEMPLATE_BY_MODEL_TYPE, default_template

TEMPLATE_ENV = "UE_DPO_TEMPLATE"
DEFAULT_SYSTEM_ENV = "UE_DPO_DEFAULT_SYSTEM"
TEMPLATES = tuple(sorted(set(TEMPLATE_BY_MODEL_TYPE.values())))  # each family's default template
# LLaMA-Factory's Jinja sets the message text with this statement; ours flattens content parts in its place
_CONTENT_STATEMENT = "{% set content = message['content'] %}"
_SYSTEM_STATEMENT = "{% set system_message = messages[0]['content'] %}"
_SYSTEM_DEFINED = "{% if system_message is defined %}"
_SYSTEM_OUTPUT = _SYSTEM_DEFINED + "{{ system_message }}{% endif %}"


class ChatTemplateError(ValueError):
    pass


def _training_template(name: str):
    from llamafactory.data.template import TEMPLATES as LLAMAFACTORY_TEMPLATES

    from ue_dpo.argument_checks import UEDPOUserError
    from ue_dpo.llamafactory.collator import template_family

    if name not in LLAMAFACTORY_TEMPLATES:
        raise ChatTemplateError(f"template {name!r} is not a LLaMA-Factory template; e.g. {', '.join(TEMPLATES)}")
    try:
        template_family(LLAMAFACTORY_TEMPLATES[name])
    except UEDPOUserError as error:
        raise ChatTemplateError(f"template {name!r}: {error}") from None
    return LLAMAFACTORY_TEMPLATES[name]


def model_template(config: Mapping[str, Any], template: str | None, model: str | Path) -> str:
    """The LLaMA-Factory template a model is prompted with, from its `config.json` (as a dict): `template` when
    given, once its plugin is known to lay out the model's images (as the stage checks a training template), else
    the template the stage trains the model's family with."""
    from ue_dpo.argument_checks import UEDPOUserError
    from ue_dpo.llamafactory.collator import checked_template

    if template is not None:
        try:
            return checked_template(template, config.get("model_type"))
        except UEDPOUserError as error:
            raise ChatTemplateError(f"template {template} for {model}: {error}") from None
    default = default_template(dict(config))
    if default is None:
        raise ChatTemplateError(
            f"{model} is a {config.get('model_type')!r} model; ue-dpo evaluates "
            f"{', '.join(sorted(TEMPLATE_BY_MODEL_TYPE))} models"
        )
    return default


def template_for_model(model_dir: str | Path, template: str | None = None) -> str:
    """The training template of a model folder: `template` checked against it, else its family's (`model_template`)."""
    from transformers import AutoConfig

    return model_template(AutoConfig.from_pretrained(str(model_dir)).to_dict(), template, model_dir)


def training_prompt_ids(template: Any, processor: Any, context: str, images: Sequence[Any]) -> list[int]:
    """Prompt token ids as LLaMA-Factory encodes a training sample with `template` (fixed for the processor's
    tokenizer): images as `<image>` before the text, expanded by the template's plugin."""
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    content = context if IMAGE_PLACEHOLDER in context else IMAGE_PLACEHOLDER * len(images) + context
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": ""}]
    plugin = template.mm_plugin
    messages = plugin.process_messages(messages, list(images), [], [], processor)
    prompt_ids, _ = template.encode_oneturn(processor.tokenizer, messages)
    prompt_ids, _ = plugin.process_token_ids(prompt_ids, None, list(images), [], [], processor.tokenizer, processor)
    return prompt_ids


def training_system_prompt(metadata: Mapping[str, Any] | None, task: str) -> str:
    """The system prompt the training template gives, from the task settings `template` and `default_system`."""
    name = setting(metadata, "template", TEMPLATE_ENV)
    if name is None:
        raise ChatTemplateError(
            f"{task} under a chat model needs the training template of the model it talks to, "
            f"for the system prompt: set {TEMPLATE_ENV}={'|'.join(TEMPLATES)} (or the task's "
            f"metadata `template`); `ue-dpo run` sets it for each run"
        )
    system = setting(metadata, "default_system", DEFAULT_SYSTEM_ENV)
    return system if system is not None else _training_template(str(name)).default_system


def training_messages(visuals: Sequence[Any], text: str, system: str) -> list[dict[str, Any]]:
    """lmms-eval chat messages (its ChatMessages protocol): the system turn, then the images before the text."""
    content = [{"type": "image", "url": visual} for visual in visuals]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": content}]


def image_placeholder(template_name: str, processor: Any) -> str:
    """What the Hugging Face processor expands into one image's tokens: LLaMA-Factory's plugin of the template
    rendering one image unexpanded (`<image>`, `<|vision_start|><|image_pad|><|vision_end|>`,
    `<|begin_of_image|><|image|><|end_of_image|>`), with the model's processor."""
    from dataclasses import replace

    from llamafactory.extras.constants import IMAGE_PLACEHOLDER
    from PIL import Image

    plugin = replace(_training_template(template_name).mm_plugin, expand_mm_tokens=False)
    image = Image.new("RGB", (1, 1))
    messages = plugin.process_messages([{"role": "user", "content": IMAGE_PLACEHOLDER}], [image], [], [], processor)
    return messages[0]["content"]


def _flatten(variable: str, source: str, placeholder: str) -> str:
    """Jinja that sets `variable` to `source`'s text, with its image parts as `placeholder` (a string stays)."""
    escaped = placeholder.replace("'", r"\'")
    return (
        f"{{% if {source} is string %}}{{% set {variable} = {source} %}}{{% else %}}"
        f"{{% set parts = namespace(text='') %}}{{% for part in {source} %}}"
        f"{{% if part['type'] in ('image', 'image_url') %}}{{% set parts.text = parts.text + '{escaped}' %}}"
        f"{{% elif part['type'] == 'text' %}}{{% set parts.text = parts.text + part['text'] %}}"
        f"{{% endif %}}{{% endfor %}}{{% set {variable} = parts.text %}}{{% endif %}}"
    )


def training_chat_template(template_name: str, processor: Any) -> str:
    """The Jinja chat template that renders OpenAI-style messages (text and image parts) as `template_name` does."""
    template = _training_template(template_name)
    tokenizer = processor.tokenizer
    jinja = template._get_jinja_template(tokenizer)
    placeholder = image_placeholder(template_name, processor)
    replacements = [
        (_CONTENT_STATEMENT, _flatten("content", "message['content']", placeholder)),
        (_SYSTEM_STATEMENT, _flatten("system_message", "messages[0]['content']", placeholder)),
    ]
    if _prefixes_a_space(tokenizer):
        # LLaMA-Factory encodes the system prompt and the user turn separately; a SentencePiece tokenizer starts
        # each with a word boundary, which in one rendered string is a space between them
        replacements.append((_SYSTEM_OUTPUT, _SYSTEM_DEFINED + "{{ system_message + ' ' }}{% endif %}"))
    for statement, replacement in replacements:
        if jinja.count(statement) != 1:
            raise ChatTemplateError(
                f"template {template_name!r} cannot be served: LLaMA-Factory's Jinja rendering of it does not hold "
                f"{statement!r} once, which the served chat template is made from; evaluate its runs with "
                f"ue_dpo_hf (an experiment without `evaluation.server`)"
            )
        jinja = jinja.replace(statement, replacement)
    # LLaMA-Factory encodes no system turn for an empty system prompt (GLM-4.1V's default); its Jinja renders one
    return jinja.replace(_SYSTEM_DEFINED, "{% if system_message is defined and system_message %}")


def _prefixes_a_space(tokenizer: Any) -> bool:
    """Whether the tokenizer marks the start of every separately encoded text as a word start (SentencePiece)."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode("USER", add_special_tokens=False))
    return bool(tokens) and tokens[0].startswith("\u2581")


def training_stop_token_ids(model_dir: str, template_name: str) -> list[int]:
    """The ids generation stops at under `template_name`, as LLaMA-Factory (and `ue_dpo_hf`) fix the tokenizer."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
    return template.get_stop_token_ids(tokenizer)


def check_served_prompt(template_name: str, processor: Any, chat_template: str) -> None:
    """Refuse a chat template whose prompt, as a server renders and tokenizes it for an image and a question, is not
    the one `ue_dpo_hf` (LLaMA-Factory) encodes for training: a served run would be scored on another prompt."""
    from copy import deepcopy

    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from PIL import Image

    processor = deepcopy(processor)
    template = get_template_and_fix_tokenizer(processor.tokenizer, DataArguments(template=template_name))
    image, question = Image.new("RGB", (56, 56), (255, 255, 255)), "Describe this image."
    messages = [
        {"role": "system", "content": [{"type": "text", "text": template.default_system or ""}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    try:
        rendered = processor.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
    except Exception as error:  # Jinja's errors, and the Python errors of the expressions it evaluates
        raise ChatTemplateError(
            f"template {template_name!r} cannot be served: its chat template fails on an image and a question "
            f"({type(error).__name__}: {error}); evaluate its runs with ue_dpo_hf (an experiment without "
            f"`evaluation.server`)"
        ) from None
    served = list(processor(text=rendered, images=[image], add_special_tokens=False)["input_ids"][0])
    trained = training_prompt_ids(template, processor, question, [image])
    if served != trained:
        first = next((i for i, (a, b) in enumerate(zip(served, trained)) if a != b), min(len(served), len(trained)))
        raise ChatTemplateError(
            f"template {template_name!r} cannot be served exactly: the served chat template's prompt differs from "
            f"the training prompt from token {first} on ({processor.tokenizer.decode(served[first : first + 8])!r} "
            f"served, {processor.tokenizer.decode(trained[first : first + 8])!r} trained); evaluate its runs with "
            f"ue_dpo_hf (an experiment without `evaluation.server`)"
        )


def write_training_chat_template(model_dir: str | Path, template_name: str) -> str:
    """Make a model folder prompt and stop as `template_name` does when served: its chat template (tokenizer and
    processor) and its generation config's end-of-sequence ids (the template's stop words, as `ue_dpo_hf` stops).
    Returns the chat template."""
    from transformers import AutoProcessor, GenerationConfig

    model_dir = str(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    chat_template = training_chat_template(template_name, processor)
    check_served_prompt(template_name, processor, chat_template)
    processor.chat_template = chat_template
    tokenizer.chat_template = chat_template
    processor.save_pretrained(model_dir)
    stop_ids = sorted(training_stop_token_ids(model_dir, template_name))
    try:
        generation_config = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        generation_config = GenerationConfig()
    generation_config.eos_token_id = stop_ids
    generation_config.save_pretrained(model_dir)
    return chat_template
