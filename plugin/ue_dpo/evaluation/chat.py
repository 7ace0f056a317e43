"""Our tasks under lmms-eval's chat models (`openai`, `vllm`, `sglang`, chat `llava_hf` / `qwen2_5_vl`), with
the prompt LLaMA-Factory's training template builds.

Two halves, which together give a served model the prompt `ue_dpo_hf` encodes:

- `ChatPrompt`: the chat messages of one item, a system turn with the training template's system prompt and a user
  turn with the images (resized as LLaMA-Factory resizes them) before the text (LLaMA-Factory puts `<image>` before
  the question). The template is named by the task setting `template` (metadata) or `UE_DPO_TEMPLATE`: a
  LLaMA-Factory template the stage trains with (`TEMPLATES` are the families' defaults); `default_system` /
  `UE_DPO_DEFAULT_SYSTEM` replaces its system prompt and `image_max_pixels` / `image_min_pixels`
  (`UE_DPO_IMAGE_MAX_PIXELS` / `UE_DPO_IMAGE_MIN_PIXELS`) its image sizes, as LLaMA-Factory's keys do.
- `training_chat_template`: a Jinja chat template that renders those messages as the training template encodes
  them, made from the template's LLaMA-Factory slots, with each image part as the placeholder the model's Hugging
  Face processor expands into the tokens the template's plugin gives an image (`image_placeholder`).
  `write_training_chat_template` stores it in a model folder, with the template's stop tokens and the image
  processor's arguments under the training's `crop_to_patches`, after checking on an image and a question that the
  folder's processor turns the rendered messages into the training prompt, token for token; a server (vLLM,
  SGLang, `transformers serve`) started on that folder then prompts as training did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_dpo.evaluation.data import setting
from ue_dpo.evaluation.model_settings import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS
from ue_dpo.model_families import TEMPLATE_BY_MODEL_TYPE, default_template

TEMPLATE_ENV = "UE_DPO_TEMPLATE"
DEFAULT_SYSTEM_ENV = "UE_DPO_DEFAULT_SYSTEM"
IMAGE_MAX_PIXELS_ENV = "UE_DPO_IMAGE_MAX_PIXELS"
IMAGE_MIN_PIXELS_ENV = "UE_DPO_IMAGE_MIN_PIXELS"
TEMPLATES = tuple(sorted(set(TEMPLATE_BY_MODEL_TYPE.values())))  # each family's default template


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


@dataclass(frozen=True)
class ChatPrompt:
    """How a chat task prompts a model as LLaMA-Factory's training encoded a sample: the training template's system
    prompt, then the images (resized as the template's plugin resizes them, within `image_max_pixels` and above
    `image_min_pixels`, before any processor sees them) before the text."""

    template: str
    system: str
    image_max_pixels: int
    image_min_pixels: int

    @classmethod
    def from_settings(cls, metadata: Mapping[str, Any] | None, task: str) -> ChatPrompt:
        """From the task settings (metadata, else environment) `template`, `default_system`, `image_max_pixels` and
        `image_min_pixels` (LLaMA-Factory's defaults)."""
        name = setting(metadata, "template", TEMPLATE_ENV)
        if name is None:
            raise ChatTemplateError(
                f"{task} under a chat model needs the training template of the model it talks to, "
                f"for the system prompt: set {TEMPLATE_ENV}={'|'.join(TEMPLATES)} (or the task's "
                f"metadata `template`); `ue-dpo run` sets it for each run"
            )
        system = setting(metadata, "default_system", DEFAULT_SYSTEM_ENV)
        pixels = {}
        for key, env, default in (
            ("image_max_pixels", IMAGE_MAX_PIXELS_ENV, DEFAULT_IMAGE_MAX_PIXELS),
            ("image_min_pixels", IMAGE_MIN_PIXELS_ENV, DEFAULT_IMAGE_MIN_PIXELS),
        ):
            value = setting(metadata, key, env, default)
            if not str(value).isdigit():
                raise ChatTemplateError(f"{task}: {key} ({env}) must be a whole number of pixels, got {value!r}")
            pixels[key] = int(value)
        return cls(
            template=str(name),
            system=system if system is not None else _training_template(str(name)).default_system,
            **pixels,
        )

    def answer(self, response: str) -> str:
        """The answer in a model's response, as `ue_dpo_hf` takes it: what follows a reasoning template's thought
        block (`<think>`...`</think>`); an unclosed block stays."""
        return _training_template(self.template).remove_thought(response)

    def messages(self, visuals: Sequence[Any], text: str) -> list[dict[str, Any]]:
        """lmms-eval chat messages (its ChatMessages protocol): the system turn, then the images before the text."""
        plugin = _training_template(self.template).mm_plugin
        images = plugin._regularize_images(
            list(visuals), image_max_pixels=self.image_max_pixels, image_min_pixels=self.image_min_pixels
        )["images"]
        content = [{"type": "image", "url": image} for image in images]
        content.append({"type": "text", "text": text})
        return [
            {"role": "system", "content": [{"type": "text", "text": self.system}]},
            {"role": "user", "content": content},
        ]


def chat_prompt_env(template: str, prompt_args: Mapping[str, Any]) -> dict[str, str]:
    """The environment that makes our chat tasks prompt as a run's training did (`ChatPrompt.from_settings`): its
    template, and the system prompt and image sizes of its training keys (`TRAINING_PROMPT_KEYS`; unset, the
    template's and LLaMA-Factory's defaults)."""
    env = {TEMPLATE_ENV: template}
    for key, variable in (
        ("default_system", DEFAULT_SYSTEM_ENV),
        ("image_max_pixels", IMAGE_MAX_PIXELS_ENV),
        ("image_min_pixels", IMAGE_MIN_PIXELS_ENV),
    ):
        if key in prompt_args:
            env[variable] = str(prompt_args[key])
    return env


def probe_image():
    """The image a served prompt is checked on: twice as wide as high and larger than a tile, so that tiling
    processors cut it into tiles (InternVL's crops, Llama 4's canvas) and a tiling difference shows."""
    from PIL import Image

    return Image.new("RGB", (672, 336), (255, 255, 255))


def image_placeholder(template_name: str, processor: Any) -> str:
    """What the model's Hugging Face processor expands into the tokens LLaMA-Factory's plugin of the template gives
    one image: the plugin's rendering of one image unexpanded (`<image>`, `[IMG]`, `<start_of_image>`,
    `<|vision_start|><|image_pad|><|vision_end|>`), or the processor's image token where the processor adds the
    image's delimiters itself (InternVL's `<IMG_CONTEXT>`, which it wraps in `<img>` and `</img>`)."""
    from dataclasses import replace

    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    plugin = _training_template(template_name).mm_plugin
    image = probe_image()
    message = [{"role": "user", "content": IMAGE_PLACEHOLDER}]
    expanded = plugin.process_messages(message, [image], [], [], processor)[0]["content"]
    trained = processor.tokenizer.encode(expanded, add_special_tokens=False)
    unexpanded = replace(plugin, expand_mm_tokens=False).process_messages(message, [image], [], [], processor)
    candidates = dict.fromkeys([unexpanded[0]["content"], getattr(processor, "image_token", None)])
    for candidate in filter(None, candidates):
        try:
            served = processor(text=candidate, images=[image], add_special_tokens=False)["input_ids"][0]
        except (ValueError, IndexError):  # the processor finds no image, or a wrong number, in the candidate
            continue
        if list(served) == trained:
            return candidate
    raise ChatTemplateError(
        f"template {template_name!r} cannot be served: the model's processor expands none of "
        f"{', '.join(map(repr, filter(None, candidates)))} into the image tokens LLaMA-Factory's "
        f"{type(plugin).__name__} gives an image; evaluate its runs with ue_dpo_hf (an experiment without "
        f"`evaluation.server`)"
    )


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
    """The Jinja chat template that renders OpenAI-style messages (text and image parts) as `template_name` encodes
    them: LLaMA-Factory's slots of the template, each image part as `image_placeholder`, the system prompt as its own
    turn or, for a template that fuses it into the first user turn (`Llama2Template`: Pixtral, Gemma 3), there;
    an empty system prompt gives no system text, as LLaMA-Factory encodes it."""
    from llamafactory.data.template import Llama2Template

    template = _training_template(template_name)
    tokenizer = processor.tokenizer
    placeholder = image_placeholder(template_name, processor)

    def slots(formatter: Any, variable: str = "content") -> str:
        try:
            return template._convert_slots_to_jinja(formatter.apply(), tokenizer, placeholder=variable)
        except ValueError as error:  # a slot naming a token by its id ("Dict is not supported")
            raise ChatTemplateError(
                f"template {template_name!r} cannot be served: its slots have no Jinja form ({error}); evaluate its "
                f"runs with ue_dpo_hf (an experiment without `evaluation.server`)"
            ) from None

    prefix, system, user, assistant = (
        slots(template.format_prefix),
        slots(template.format_system, "system_message"),
        slots(template.format_user),
        slots(template.format_assistant),
    )
    given = "system_message is defined and system_message"
    jinja = "{{ " + prefix + " }}" if prefix else ""
    if template.default_system:
        jinja += "{% set system_message = '" + template._jinja_escape(template.default_system) + "' %}"
    jinja += (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        + _flatten("system_message", "messages[0]['content']", placeholder)
        + "{% else %}{% set loop_messages = messages %}{% endif %}"
    )
    fused = isinstance(template, Llama2Template)
    if not fused:
        # LLaMA-Factory encodes the system turn and the user turn separately; a SentencePiece tokenizer starts each
        # with a word boundary, which in one rendered string is a space between them
        separator = " + ' '" if _prefixes_a_space(tokenizer) else ""
        jinja += "{% if " + given + " %}{{ " + system + separator + " }}{% endif %}"
    jinja += "{% for message in loop_messages %}" + _flatten("content", "message['content']", placeholder)
    if fused:
        jinja += "{% if loop.first and " + given + " %}{% set content = " + system + " + content %}{% endif %}"
    return jinja + (
        "{% if message['role'] == 'user' %}{{ " + user + " }}"
        "{% elif message['role'] == 'assistant' %}{{ " + assistant + " }}{% endif %}{% endfor %}"
    )


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

    processor = deepcopy(processor)
    template = get_template_and_fix_tokenizer(processor.tokenizer, DataArguments(template=template_name))
    image, question = probe_image(), "Describe this image."
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
    trained = training_prompt_ids(template, processor, question, [image])
    messages[1]["content"][0]["image"] = image
    served_by = {
        # vLLM and SGLang render the chat template, then tokenize the text without adding special tokens
        "rendered, then tokenized": processor(text=rendered, images=[image], add_special_tokens=False)["input_ids"][0],
        # transformers serve lets the processor tokenize (special tokens added unless the prompt starts with BOS)
        "tokenized by the processor's chat template call": processor.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0],
    }
    for how, served in served_by.items():
        served = list(served)
        if served != trained:
            first = next((i for i, (a, b) in enumerate(zip(served, trained)) if a != b), min(len(served), len(trained)))
            raise ChatTemplateError(
                f"template {template_name!r} cannot be served exactly: the served chat template's prompt ({how}) "
                f"differs from the training prompt from token {first} on "
                f"({processor.tokenizer.decode(served[first : first + 8])!r} served, "
                f"{processor.tokenizer.decode(trained[first : first + 8])!r} trained); evaluate its runs with "
                f"ue_dpo_hf (an experiment without `evaluation.server`)"
            )


def crop_to_patches_kwargs(template_name: str, processor: Any, crop_to_patches: bool) -> dict[str, Any]:
    """The image-processor arguments LLaMA-Factory's plugin of the template calls with under LLaMA-Factory's
    `crop_to_patches` (InternVL's tiles; off, the image processor's own setting); {} for a plugin that reads no such
    key, where `crop_to_patches: true` would have no effect and is refused."""
    from ue_dpo.argument_checks import UEDPOUserError
    from ue_dpo.llamafactory.collator import check_crop_to_patches, template_family

    family = template_family(_training_template(template_name))
    try:
        check_crop_to_patches(family, crop_to_patches)
    except UEDPOUserError as error:
        raise ChatTemplateError(f"template {template_name!r}: {error}") from None
    if family.crop_to_patches_kwargs is None:
        return {}
    if crop_to_patches:
        return dict(family.crop_to_patches_kwargs)
    return {"crop_to_patches": processor.image_processor.crop_to_patches}


def write_training_chat_template(model_dir: str | Path, template_name: str, crop_to_patches: bool = False) -> str:
    """Make a model folder prompt and stop as `template_name` does when served: its chat template (tokenizer and
    processor), its generation config's end-of-sequence ids (the template's stop words, as `ue_dpo_hf` stops), a
    tokenizer that adds no special tokens of its own (a server that tokenizes with them, `transformers serve`, would
    add a BOS that LLaVA's training prompt does not have) and the image-processor arguments of the training's
    `crop_to_patches` (`crop_to_patches_kwargs`), stored as the tokenizer's init arguments: the saved defaults a
    Hugging Face processor call reads (over the processor class's own defaults, which for InternVL crop). Checked
    first (`check_served_prompt`). Returns the chat template."""
    from transformers import AutoProcessor, GenerationConfig

    model_dir = str(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    processor.crop_to_patches = crop_to_patches  # as LLaMA-Factory sets its key on the processor
    tokenizer.init_kwargs.update(crop_to_patches_kwargs(template_name, processor, crop_to_patches))
    # LLaMA-Factory encodes without the tokenizer's special tokens; the chat template writes the ones it has
    tokenizer.add_bos_token = False
    tokenizer.add_eos_token = False
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
