"""Which templates and models `stage: ue_dpo` accepts (by the model's family and its plugin's ancestry), and where
each family's vision modules and image encoder are on the tiny models."""

import re

import pytest

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.model_families import FAMILIES, default_template, image_encoder_owner

FAMILY_ARCHITECTURES = (
    "llava",
    "qwen2_vl",
    "qwen2_5_vl",
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


def llamafactory_template(name: str):
    from llamafactory.data.template import TEMPLATES

    return TEMPLATES[name]


def family(template: str, model_type: str | None = None):
    from ue_dpo.llamafactory.collator import template_family

    return template_family(llamafactory_template(template), model_type)


@pytest.mark.parametrize(
    "template, model_type, family_name",
    [
        ("llava", "llava", "LLaVA"),
        ("qwen2_vl", "qwen2_5_vl", "Qwen2-VL, Qwen2.5-VL"),
        ("qwen3_vl", "qwen3_vl", "Qwen3-VL"),
        ("qwen3_vl_nothink", "qwen3_vl", "Qwen3-VL"),
        ("qwen3_5", "qwen3_5", "Qwen3.5"),
        ("glm4v", "glm4v", "GLM-4.1V"),
        # the mixture-of-experts models: their dense sibling's layout, GLM-4.5V's with LLaMA-Factory's glm4_5v
        ("qwen3_vl", "qwen3_vl_moe", "Qwen3-VL"),
        ("qwen3_vl_nothink", "qwen3_vl_moe", "Qwen3-VL"),
        ("qwen3_5", "qwen3_5_moe", "Qwen3.5"),
        ("glm4_5v", "glm4v_moe", "GLM-4.5V, GLM-4.6V"),
        ("glm4v", "glm4v_moe", "GLM-4.5V, GLM-4.6V"),  # the two templates differ in their tool-call format only
        ("glm4_5v", "glm4v", "GLM-4.1V"),  # GLM-4.6V-Flash: a dense `glm4v` model of LLaMA-Factory's glm4_5v group
        ("pixtral", "llava", "Pixtral, Mistral-Small-3"),  # Pixtral-12B: a `llava` model the pixtral template trains
        # the plugin of a family's subclass templates: Qwen3VLPlugin and GLM4VPlugin derive from Qwen2VLPlugin
        ("qwen3_vl", None, "Qwen3-VL"),
        ("qwen3_5", None, "Qwen3-VL"),  # its plugin's first family: a template alone does not tell the two apart
        ("glm4v", None, "GLM-4.1V"),
        ("glm4_5v", None, "GLM-4.1V"),
        ("mimo_vl", None, "Qwen2-VL, Qwen2.5-VL"),  # a Qwen2VLPlugin template of another name
    ],
)
def test_a_template_is_accepted_by_its_plugin_or_the_nearest_served_ancestor(template, model_type, family_name):
    assert family(template, model_type).name == family_name


@pytest.mark.parametrize(
    "template, model_type, message",
    [
        (
            "qwen2_vl",
            "qwen3_vl",
            "this template's multimodal plugin Qwen2VLPlugin does not lay out Qwen3-VL images; Qwen3-VL trains with "
            "`template: qwen3_vl` (plugin Qwen3VLPlugin)",
        ),
        (
            "qwen",
            "qwen2_vl",
            "this template's multimodal plugin BasePlugin does not lay out Qwen2-VL, Qwen2.5-VL images (it has no "
            "image token); Qwen2-VL, Qwen2.5-VL trains with `template: qwen2_vl`",
        ),
        ("glm4v", "glm46v", "`stage: ue_dpo` does not train `model_type: glm46v` models"),
        (
            "llava",
            "paligemma",
            "Supported model types: llava, qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe, glm4v, "
            "glm4v_moe, llava_next, mistral3, internvl, gemma3, llama4.",
        ),
        ("qwen", None, "this template uses BasePlugin without an image token. Supported templates: llava, qwen2_vl"),
        (
            "qwen",
            None,
            "one of LlavaPlugin, Qwen2VLPlugin, Qwen3VLPlugin, GLM4VPlugin, LlavaNextPlugin, PixtralPlugin, "
            "InternVLPlugin, Gemma3Plugin, Llama4Plugin or derives",
        ),
    ],
)
def test_what_the_stage_cannot_train_is_refused_with_the_reason_and_the_alternative(template, model_type, message):
    with pytest.raises(UEDPOUserError) as refused:
        family(template, model_type)
    assert message in str(refused.value)


def test_every_multimodal_template_of_llamafactory_is_trained_or_refused_with_its_reason():
    """A plugin LLaMA-Factory adds fails here until it is described as a family or its reason is written down."""
    from llamafactory.data.template import TEMPLATES

    from ue_dpo.model_families import FAMILY_BY_MM_PLUGIN, UNTRAINED_PLUGIN_REASONS, family_of_plugin

    assert not set(UNTRAINED_PLUGIN_REASONS) & set(FAMILY_BY_MM_PLUGIN)
    trained, refused = set(), set()
    for name, template in TEMPLATES.items():
        plugin = template.mm_plugin
        if not any(getattr(plugin, f"{kind}_token", None) for kind in ("image", "video", "audio")):
            continue
        plugin_name = type(plugin).__name__
        if plugin_name in UNTRAINED_PLUGIN_REASONS:
            with pytest.raises(UEDPOUserError) as refusal:
                family(name, None)
            assert f"{plugin_name}: {UNTRAINED_PLUGIN_REASONS[plugin_name]}. `stage: dpo` trains them." in str(
                refusal.value
            )
            with pytest.raises(UEDPOUserError, match=re.escape(UNTRAINED_PLUGIN_REASONS[plugin_name][:20])):
                family(name, "llava")  # the reason comes before the model's own family
            refused.add(name)
        else:
            assert family(name, None) is family_of_plugin(type(plugin)), name
            trained.add(name)
    assert {
        "llava",
        "qwen2_vl",
        "qwen3_vl",
        "glm4v",
        "glm4_5v",
        "llava_next",
        "pixtral",
        "mistral_small",
        "intern_vl",
        "gemma3",
        "llama4",
    } <= trained
    assert {"minicpm_v", "kimi_vl", "gemma4", "qwen2_omni", "video_llava", "qwen2_audio"} <= refused


def test_every_family_plugin_is_llamafactorys_and_every_model_type_has_its_vision_keys():
    from llamafactory.data.mm_plugin import PLUGINS
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    plugin_names = {plugin.__name__ for plugin in PLUGINS.values()}
    for model_family in FAMILIES:
        assert model_family.mm_plugin in plugin_names
        assert type(llamafactory_template(model_family.template).mm_plugin).__name__ == model_family.mm_plugin
        for model_type in model_family.model_types:
            assert model_type in COMPOSITE_MODELS


@pytest.mark.parametrize("arch", FAMILY_ARCHITECTURES)
def test_the_vision_modules_are_llamafactorys_keyed_modules_whole_on_the_encoder_owner(arch, request):
    """The frozen check of the image-feature cache reads whole modules: every parameter LLaMA-Factory's freeze keys
    name lies in one, and they hold every parameter of the vision tower and projector (GLM-4.1V's keys miss some)."""
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS
    from transformers import AutoModelForImageTextToText

    from ue_dpo.llamafactory.step_forward import vision_modules

    model = AutoModelForImageTextToText.from_pretrained(request.getfixturevalue(f"tiny_{arch}_dir"))
    owner = image_encoder_owner(model)
    if arch == "llama4":  # no inner model: the encoder is on the top-level one
        assert owner is model and not hasattr(model, "model")
    else:
        assert owner is model.model
        assert image_encoder_owner(model.model) is model.model  # a model without an inner one holds its own encoder
    composite = COMPOSITE_MODELS[model.config.model_type]
    keys = (*composite.vision_model_keys, *composite.projector_keys)
    names = [name for name, _ in model.named_parameters()]
    keyed = {name for name in names if any(key in name for key in keys)}
    modules = vision_modules(model.config.model_type)
    owner_prefix = "" if owner is model else "model."
    in_modules = {name for name in names if name.removeprefix(owner_prefix).split(".")[0] in modules}
    assert keyed and keyed <= in_modules
    towers = ["multi_modal_projector", "vision_tower"]
    expected_modules = {"llama4": ["multi_modal_projector", "vision_model"]}.get(
        arch, towers if arch in ("llava", "internvl", "gemma3") else ["visual"]
    )
    assert modules == expected_modules
    assert (keyed == in_modules) == (arch not in ("glm4v", "glm4v_moe"))


@pytest.mark.parametrize(
    ("config", "template"),
    [
        ({"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}}, "llava"),
        ({"model_type": "llava", "vision_config": {"model_type": "pixtral"}}, "pixtral"),  # Pixtral-12B
        ({"model_type": "mistral3", "vision_config": {"model_type": "pixtral"}}, "mistral_small"),
        ({"model_type": "qwen2_5_vl"}, "qwen2_vl"),
        ({"model_type": "qwen3_vl_moe"}, "qwen3_vl"),
        ({"model_type": "glm4v_moe"}, "glm4_5v"),
        ({"model_type": "mllama"}, None),
    ],
)
def test_the_default_template_of_a_config_follows_its_vision_tower_where_its_model_type_is_shared(config, template):
    assert default_template(config) == template
