"""The vision-language model families `stage: ue_dpo` trains, each described once.

A family says what the stage needs to know about a model beyond the language model every family shares: the
LLaMA-Factory template and multimodal plugin it trains with, which batch keys carry its images and its position ids,
and how its `pixel_values` hold one image after another. Its vision tower and projector are those LLaMA-Factory's own
freeze logic names (`COMPOSITE_MODELS` in llamafactory.model.model_utils.visual). The collator, the per-step forward
(prefix sharing, the image-feature cache), evaluation and `ue-dpo inspect` read it here; adding a family is one entry
in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

# How `pixel_values` hold a batch's images:
#   stacked       `[N, C, H, W]`, one image per entry of dim 0 (LLaVA)
#   grid_patches  `[Σ patches, C·T·P·P]`, each image's patches in a row, sized by `image_grid_thw` (Qwen2-VL,
#                 Qwen3-VL, Qwen3.5, GLM-4.1V, GLM-4.5V: rows of merge x merge blocks of P x P patches, each patch's T
#                 copies of a still image side by side)
#   anyres_patches `[N, P_max, C, S, S]`, per image a resized base patch, then the crops of its high-resolution
#                 canvas, then zero patches up to the batch's most; `image_sizes` holds each image's size as the
#                 processor received it (LLaVA-NeXT)
#   padded_images `[N, C, H_max, W_max]`, each image at its own size `image_sizes` in the top-left corner, zeros
#                 around it (Pixtral, Mistral-Small-3)
#   tiles         `[Σ tiles, C, H, W]`, each image's tiles in a row (InternVL's crops, then its thumbnail). The batch
#                 does not say how many tiles an image has; its run of image placeholders in `input_ids` does: the
#                 same number of placeholders per tile, one run per image
#   canvas_tiles  `[Σ tiles, C, S, S]`, per image the tiles of its canvas (rows, left to right: the image resized into
#                 the top-left corner, the rest padding), then, where it has more than one, a global tile (the whole
#                 image resized to S x S) (Llama 4). Tiles are counted as for `tiles`; an image's run of placeholders
#                 also holds its `image_run_tokens` (tile separators)
PixelLayout = Literal["stacked", "grid_patches", "anyres_patches", "padded_images", "tiles", "canvas_tiles"]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type`s of the family
    template: str  # the LLaMA-Factory template the stage trains, evaluates and inspects it with
    mm_plugin: str  # the class of that template's multimodal plugin in LLaMA-Factory's mm_plugin.py (or a subclass)
    image_keys: tuple[str, ...]  # batch keys of the image inputs, in chosen-rows-then-rejected-rows order
    position_keys: tuple[str, ...]  # batch keys of per-token positions; packing keeps `position_ids` only
    pixel_layout: PixelLayout
    unshared_reason: str | None = None  # why the pairs of this family cannot share their prompts, if they cannot
    # vision parameters outside LLaMA-Factory's keyed modules, on the image encoder's owner (LLaVA-NeXT's image_newline)
    vision_parameters: tuple[str, ...] = ()
    # other families' model types this family's template also trains, its layout the collator's (Pixtral-12B: `llava`)
    template_model_types: tuple[str, ...] = ()
    # the image placeholder of `input_ids` where it is not the processor's `image_token` (Llama 4's `<|patch|>`)
    image_token: str | None = None
    # tokens inside an image's run of placeholders that are not placeholders (Llama 4's tile separators)
    image_run_tokens: tuple[str, ...] = ()
    # what LLaMA-Factory's plugin passes the image processor under its `crop_to_patches: true` (InternVL's tiles and
    # thumbnail); None where the plugin does not read the key
    crop_to_patches_kwargs: Mapping[str, Any] | None = None

    def split_images(
        self, batch: dict[str, torch.Tensor], placeholder_ids: tuple[int, ...], run_ids: tuple[int, ...] = ()
    ) -> list[torch.Tensor]:
        """`pixel_values` as one tensor per image; `placeholder_ids` are the image placeholders of `input_ids`,
        `run_ids` the ids of the family's `image_run_tokens`."""
        if self.pixel_layout in ("stacked", "anyres_patches", "padded_images"):
            return list(batch["pixel_values"].unbind(0))
        if self.pixel_layout in ("tiles", "canvas_tiles"):
            return list(batch["pixel_values"].split(tiles_per_image(batch, placeholder_ids, run_ids), dim=0))
        return list(batch["pixel_values"].split(batch["image_grid_thw"].prod(-1).tolist(), dim=0))

    def joined_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """`pixel_values` from one tensor per image (the inverse of `split_images`)."""
        import torch  # not at the top: `ue_dpo.config` reads the families and loads no torch

        if self.pixel_layout in ("grid_patches", "tiles", "canvas_tiles"):
            return torch.cat(images)
        return torch.stack(images)

    def images_per_row_entries(
        self,
        batch: dict[str, torch.Tensor],
        images: int,
        placeholder_ids: tuple[int, ...],
        run_ids: tuple[int, ...] = (),
    ) -> dict[str, int]:
        """How many entries of each image key the first `images` images of the batch take."""
        if self.pixel_layout in ("tiles", "canvas_tiles"):
            return {"pixel_values": sum(tiles_per_image(batch, placeholder_ids, run_ids)[:images])}
        grid_thw = batch.get("image_grid_thw")
        entries = {"pixel_values": images if grid_thw is None else int(grid_thw[:images].prod(-1).sum())}
        for per_image_key in ("image_grid_thw", "image_sizes"):
            if per_image_key in self.image_keys:
                entries[per_image_key] = images
        return entries


def tiles_per_image(
    batch: dict[str, torch.Tensor], placeholder_ids: tuple[int, ...], run_ids: tuple[int, ...] = ()
) -> list[int]:
    """The tiles of each image of a `tiles` or `canvas_tiles` batch, in `pixel_values` order: each image is one run
    of placeholders (and `run_ids` tokens between them) in `input_ids` (row by row), of the same number of
    placeholders per tile."""
    import torch

    input_ids = batch["input_ids"]
    in_run = torch.isin(input_ids, torch.tensor((*placeholder_ids, *run_ids), device=input_ids.device)).int()
    in_run = torch.nn.functional.pad(in_run, (1, 0)).flatten()  # no run goes on into the next row
    starts = (torch.diff(in_run, prepend=in_run.new_zeros(1)) == 1).cumsum(0)
    is_placeholder = torch.isin(input_ids, torch.tensor(placeholder_ids, device=input_ids.device))
    is_placeholder = torch.nn.functional.pad(is_placeholder, (1, 0)).flatten()
    run_lengths = torch.bincount(starts[is_placeholder] - 1, minlength=int(starts[-1])).tolist()
    tiles = batch["pixel_values"].shape[0]
    per_tile, remainder = divmod(sum(run_lengths), tiles)
    if remainder or per_tile == 0 or any(length % per_tile for length in run_lengths):
        raise ValueError(
            f"the batch's {sum(run_lengths)} image placeholders in {len(run_lengths)} runs do not divide into its "
            f"{tiles} tiles"
        )
    return [length // per_tile for length in run_lengths]


def image_encoder_owner(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward calls `get_image_features`: the inner vision-language model where the model has one
    that defines it (LLaVA, the Qwen and GLM families), else the model itself (Llama 4)."""
    inner = getattr(model, "model", None)
    return inner if hasattr(inner, "get_image_features") else model


_PATCHIFIED = {
    "image_keys": ("pixel_values", "image_grid_thw"),
    "position_keys": ("position_ids", "rope_deltas"),
    "pixel_layout": "grid_patches",
}
FAMILIES = (
    ModelFamily(
        name="LLaVA",
        model_types=("llava",),
        template="llava",
        mm_plugin="LlavaPlugin",
        image_keys=("pixel_values", "image_sizes"),  # image_sizes: Pixtral-12B, a `llava` model (`template: pixtral`)
        position_keys=("position_ids",),
        pixel_layout="stacked",
    ),
    ModelFamily(
        name="Qwen2-VL, Qwen2.5-VL",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        template="qwen2_vl",
        mm_plugin="Qwen2VLPlugin",
        **_PATCHIFIED,
    ),
    ModelFamily(
        name="Qwen3-VL",
        model_types=("qwen3_vl", "qwen3_vl_moe"),
        template="qwen3_vl",
        mm_plugin="Qwen3VLPlugin",
        **_PATCHIFIED,
    ),
    ModelFamily(
        name="Qwen3.5",
        model_types=("qwen3_5", "qwen3_5_moe"),
        template="qwen3_5",
        mm_plugin="Qwen3VLPlugin",
        unshared_reason=(
            "Qwen3.5's Gated DeltaNet layers are recurrent and take no attention mask: in a packed row the rejected "
            "response would read the chosen one"
        ),
        **_PATCHIFIED,
    ),
    ModelFamily(
        name="GLM-4.1V",
        model_types=("glm4v",),
        template="glm4v",
        mm_plugin="GLM4VPlugin",
        **_PATCHIFIED,
    ),
    ModelFamily(  # GLM-4.1V's layout and plugin; its template differs in the tool-call format only
        name="GLM-4.5V, GLM-4.6V",
        model_types=("glm4v_moe",),
        template="glm4_5v",
        mm_plugin="GLM4VPlugin",
        **_PATCHIFIED,
    ),
    ModelFamily(
        name="LLaVA-NeXT",
        model_types=("llava_next",),
        template="llava_next",
        mm_plugin="LlavaNextPlugin",
        vision_parameters=("image_newline",),
        image_keys=("pixel_values", "image_sizes"),
        position_keys=("position_ids",),
        pixel_layout="anyres_patches",
    ),
    ModelFamily(
        name="Pixtral, Mistral-Small-3",
        model_types=("mistral3",),
        template_model_types=("llava",),  # Pixtral-12B is a `llava` model; its `template: pixtral` has this plugin
        template="mistral_small",
        mm_plugin="PixtralPlugin",
        image_keys=("pixel_values", "image_sizes"),
        position_keys=("position_ids",),
        pixel_layout="padded_images",
    ),
    ModelFamily(
        name="InternVL 3, 3.5 (-hf)",
        model_types=("internvl",),
        template="intern_vl",
        mm_plugin="InternVLPlugin",
        image_keys=("pixel_values",),
        position_keys=("position_ids",),
        pixel_layout="tiles",
        crop_to_patches_kwargs=MappingProxyType({"crop_to_patches": True, "max_patches": 12, "min_patches": 1}),
    ),
    ModelFamily(
        name="Gemma 3",
        model_types=("gemma3",),
        template="gemma3",
        mm_plugin="Gemma3Plugin",
        image_keys=("pixel_values",),
        position_keys=("position_ids",),
        pixel_layout="stacked",
        unshared_reason=(
            "Gemma 3 builds its own per-layer masks from `token_type_ids` (bidirectional attention within each "
            "image) and its sliding windows, which a packed row's 4-D mask would replace"
        ),
    ),
    ModelFamily(
        name="Llama 4",
        model_types=("llama4",),
        template="llama4",
        mm_plugin="Llama4Plugin",
        image_keys=("pixel_values",),
        position_keys=("position_ids",),
        pixel_layout="canvas_tiles",
        image_token="<|patch|>",
        image_run_tokens=("<|tile_x_separator|>", "<|tile_y_separator|>", "<|image|>"),
        unshared_reason=(
            "Llama 4's chunked-attention layers build their own chunk masks, which a packed row's 4-D mask would "
            "replace"
        ),
    ),
)
FAMILY_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
# config.json `model_type` -> the LLaMA-Factory template the stage trains it with (training, evaluation, inspect)
TEMPLATE_BY_MODEL_TYPE = {model_type: family.template for model_type, family in FAMILY_BY_MODEL_TYPE.items()}
# (config `model_type`, its `vision_config.model_type`) -> the template, where the model type alone names another
# family's template: Pixtral-12B is a `llava` model with a Pixtral vision tower
TEMPLATE_BY_VISION_TOWER = {("llava", "pixtral"): "pixtral"}
# a template alone names the first family of its plugin (Qwen3VLPlugin's: Qwen3-VL)
FAMILY_BY_MM_PLUGIN = {
    plugin: next(family for family in FAMILIES if family.mm_plugin == plugin)
    for plugin in dict.fromkeys(family.mm_plugin for family in FAMILIES)
}


_NOT_DESCRIBED = "its image layout, positions and attention are not described as a family here yet"
# Why `stage: ue_dpo` refuses the templates of LLaMA-Factory's other multimodal plugins (`stage: dpo` trains them).
# tests/test_model_families.py fails on a plugin of LLaMA-Factory's that is neither a family's nor listed here.
UNTRAINED_PLUGIN_REASONS = {
    "ErnieVLPlugin": f"ERNIE-4.5-VL: {_NOT_DESCRIBED}",
    "Gemma3nPlugin": f"Gemma 3n (images and audio, per-layer embeddings): {_NOT_DESCRIBED}",
    "Gemma4Plugin": (
        "Gemma 4 soft-caps its logits (`final_logit_softcapping`), which the stage's chunked projection of the "
        "response-token statistics does not apply, so its log-probs would not be the model's"
    ),
    "KimiVLPlugin": "Kimi-VL is a remote-code model (`trust_remote_code`), whose forward the stage cannot lay out",
    "LFMVLPlugin": f"LFM2-VL: {_NOT_DESCRIBED}",
    "LlavaNextVideoPlugin": "LLaVA-NeXT-Video's templates take videos, which v' does not noise",
    "MiniCPMVPlugin": "MiniCPM-V and MiniCPM-o are remote-code models (`trust_remote_code`), whose forward the stage "
    "cannot lay out",
    "MiniCPMV4_6Plugin": "MiniCPM-V 4.6 is a remote-code model (`trust_remote_code`), whose forward the stage cannot "
    "lay out",
    "MllamaPlugin": f"Llama 3.2 Vision (Mllama) reads images through cross-attention layers: {_NOT_DESCRIBED}",
    "PaliGemmaPlugin": f"PaliGemma attends bidirectionally over its prefix: {_NOT_DESCRIBED}",
    "Qwen2AudioPlugin": "Qwen2-Audio takes audio, not images",
    "Qwen2OmniPlugin": f"Qwen2.5-Omni and Qwen3-Omni (audio and video beside images): {_NOT_DESCRIBED}",
    "VideoLlavaPlugin": "Video-LLaVA's templates take videos, which v' does not noise",
    "YoutuVLPlugin": f"Youtu-VL: {_NOT_DESCRIBED}",
}


def family_of_plugin(plugin_class: type) -> ModelFamily | None:
    """The family of a template's multimodal plugin class: its own, or that of its nearest ancestor."""
    for cls in plugin_class.__mro__:
        if cls.__name__ in FAMILY_BY_MM_PLUGIN:
            return FAMILY_BY_MM_PLUGIN[cls.__name__]
    return None


def family_of(model_type: str) -> ModelFamily | None:
    return FAMILY_BY_MODEL_TYPE.get(model_type)


def default_template(config: dict) -> str | None:
    """The template the stage trains a model with, read from its `config.json` (as a dict): by its vision tower where
    its model type is another family's, else by its model type; None for a model type no family has."""
    vision_config = config.get("vision_config") or {}
    tower = (config.get("model_type"), vision_config.get("model_type"))
    return TEMPLATE_BY_VISION_TOWER.get(tower, TEMPLATE_BY_MODEL_TYPE.get(config.get("model_type")))


def supported_templates() -> str:
    """The templates, with the families they serve where the name differs, as a message lists them."""
    return ", ".join(
        family.template if family.name.lower() == family.template else f"{family.template} ({family.name})"
        for family in FAMILIES
    )
