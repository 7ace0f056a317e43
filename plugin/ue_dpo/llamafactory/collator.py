"""Pairwise collator that adds the counterfactual image v' and which rows have an image.

v' by `ue_noise_space`:
    pixel_values  VCD: the processor's normalised tensor of each image, noised once. The patches of Qwen2-VL, Qwen3-VL,
                  Qwen3.5 and GLM-4.1V hold each still image twice (temporal_patch_size 2); eps is drawn in the
                  image's layout and patchified as the processor patchifies, so both copies see the same eps and v'
                  is the patchified VCD image. LLaVA-NeXT's patches and Pixtral's padded images are noised on their
                  real pixels only (see `noised_anyres_patches`, `noised_padded_image`), and so are Llama 4's canvas
                  tiles (`noised_canvas_tiles`): padding keeps the processor's values.
    image         TPO: the image as loaded, at its own resolution, through ToTensor, noise and ToPILImage (its
                  wrapping byte conversion), then everything the processor does to the clean image.

Second images (a method's `second_images`, `core.second_images`) are built on each normalised image; Qwen2-VL's
patches are laid back out as the image, transformed, and patchified again to the same grid. Those read from a dataset
column (`image_columns`: m', each response's image, MFPO's region mask) go through the template's multimodal plugin
as the row's images do, and must come out in the same layout (same shape and grid).
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from llamafactory.data import PairwiseDataCollatorWithPadding
from PIL import Image

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.core.noise import (
    add_diffusion_noise,
    diffuse,
    diffusion_noise,
    sample_noise_seed,
    tpo_noised_image,
)
from ue_dpo.core.second_images import (
    gaussian_image,
    mask_inside,
    mdpo_crop,
    patchify_grid,
    region_noised,
    unpatchify_grid,
)
from ue_dpo.core.shared_prefix import PrefixNotShared
from ue_dpo.images import (
    describe_image_source,
    load_image_strictly,
    unreadable_image_reason,
)
from ue_dpo.llamafactory.image_columns import prepared_column
from ue_dpo.methods.base import CHOSEN_IMAGE_COLUMN, REJECTED_IMAGE_COLUMN, SecondImage
from ue_dpo.model_families import (
    FAMILIES,
    FAMILY_BY_MM_PLUGIN,
    FAMILY_BY_MODEL_TYPE,
    UNTRAINED_PLUGIN_REASONS,
    ModelFamily,
    family_of,
    family_of_plugin,
    supported_templates,
)

NOISED_PIXEL_VALUES = "ue_noised_pixel_values"
HAS_IMAGE = "ue_has_image"
ROW_DIGEST = "ue_row_digest"
SECOND_PIXEL_VALUES = "ue_second_pixel_values:"  # then the image's name


def template_family(template, model_type: str | None = None) -> ModelFamily:
    """The model family the stage trains with a LLaMA-Factory template: where the model (config `model_type`) is
    known, the template's family if that family's template trains the model's type (Pixtral-12B), else the model's,
    whose plugin the template's must be or derive from; without the model, the family of the template's plugin or
    of its nearest ancestor. Refused with a UEDPOUserError that names the reason and what to use instead."""
    plugin_class = type(template.mm_plugin)
    plugin = plugin_class.__name__
    image_token = template.mm_plugin.image_token
    if plugin in UNTRAINED_PLUGIN_REASONS:
        raise UEDPOUserError(
            f"`stage: ue_dpo` does not train with the templates of LLaMA-Factory's {plugin}: "
            f"{UNTRAINED_PLUGIN_REASONS[plugin]}. `stage: dpo` trains them. Supported templates: "
            f"{supported_templates()}."
        )
    plugin_family = family_of_plugin(plugin_class)
    if model_type is not None:
        family = family_of(model_type)
        if family is None:
            raise UEDPOUserError(
                f"`stage: ue_dpo` does not train `model_type: {model_type}` models (see docs/training.md, "
                f'"Supported models"). Supported model types: {", ".join(FAMILY_BY_MODEL_TYPE)}.'
            )
        if plugin_family is not None and model_type in plugin_family.template_model_types:
            return plugin_family
        if image_token is None or family.mm_plugin not in {cls.__name__ for cls in plugin_class.__mro__}:
            raise UEDPOUserError(
                f"this template's multimodal plugin {plugin} does not lay out {family.name} images"
                f"{'' if image_token is not None else ' (it has no image token)'}; {family.name} trains with "
                f"`template: {family.template}` (plugin {family.mm_plugin}). Supported templates: "
                f"{supported_templates()}."
            )
        return family
    if plugin_family is None or image_token is None:
        raise UEDPOUserError(
            f"`stage: ue_dpo` needs an image template whose multimodal plugin is one of "
            f"{', '.join(FAMILY_BY_MM_PLUGIN)} or derives from one; this template uses {plugin}"
            f"{'' if image_token is not None else ' without an image token'}. Supported templates: "
            f"{supported_templates()}."
        )
    return plugin_family


def checked_template(name: str, model_type: str) -> str:
    """`name`, a template a user gave for a model of config `model_type`, once it is known to be a LLaMA-Factory
    template whose plugin lays out that model's images (`template_family`); refused with a UEDPOUserError otherwise."""
    from llamafactory.data.template import TEMPLATES

    if name not in TEMPLATES:
        raise UEDPOUserError(
            f"template {name!r} is not one of LLaMA-Factory's templates; supported templates: {supported_templates()}."
        )
    template_family(TEMPLATES[name], model_type)
    return name


def unreadable_batch_image_error(pair_images: list[list]) -> UEDPOUserError | None:
    """The error naming the first image of a batch that does not decode, or None when all do."""
    for images in pair_images:
        for image in images:
            reason = unreadable_image_reason(image)
            if reason is not None:
                return UEDPOUserError(
                    f"training image {describe_image_source(image)} cannot be read: {reason}. LLaMA-Factory prepared "
                    "its row earlier (preprocessing cache or `tokenized_path`), so the file changed since. Replace "
                    "the file with a complete copy, or remove its row and prepare the data again "
                    "(`overwrite_cache: true`)."
                )
    return None


def chosen_row_images(
    batch: dict[str, torch.Tensor], placeholder_ids: tuple[int, ...], family: ModelFamily
) -> dict[str, torch.Tensor]:
    """The image inputs of a batch's chosen rows (B chosen rows, then B rejected). The pairwise collator repeats each
    pair's images for its rejected row, unless only the chosen rows hold placeholders: the blank stand-in image of a
    text-only batch lies in the first chosen row's padding."""
    keys = [key for key in family.image_keys if key in batch]
    is_placeholder = torch.isin(batch["input_ids"], torch.tensor(placeholder_ids, device=batch["input_ids"].device))
    pairs = batch["input_ids"].shape[0] // 2
    chosen_placeholders, rejected_placeholders = (
        int(rows.sum()) for rows in (is_placeholder[:pairs], is_placeholder[pairs:])
    )
    if rejected_placeholders == 0:
        return {key: batch[key] for key in keys}
    images = len(family.split_images(batch, placeholder_ids))
    chosen_entries = family.images_per_row_entries(batch, images // 2, placeholder_ids)
    chosen = {key: batch[key][: chosen_entries[key]] for key in keys}
    if (
        chosen_placeholders != rejected_placeholders
        or images % 2
        or not all(torch.equal(chosen[key], batch[key][chosen_entries[key] :]) for key in keys)
    ):
        raise PrefixNotShared("the rejected rows' images are not those of their pairs' chosen rows")
    return chosen


def _digest(array: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).digest()


def loaded_pixels(image) -> np.ndarray:
    """An image as loaded, `[H, W, 3]` uint8: what v''s seed and the row digests are computed from."""
    return np.array(load_image_strictly(image).convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class ImageNoise:
    """What noising one image takes besides its entries of `pixel_values`: its eps seed, its index among the
    batch's images (for its layout's per-image keys), the batch, the processor and the diffusion step, and the image
    as loaded (`loaded_pixels`) with the template's multimodal plugin, which resizes it before the processor."""

    seed: int
    index: int
    batch: dict
    processor: Any
    step: int
    schedule: str
    loaded: np.ndarray
    mm_plugin: Any


def noised_stacked_image(pixels: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """`[C, H, W]`: VCD's noise of the normalised image, eps of its shape. Also one image's `[T, C, H, W]` tiles
    (InternVL): one eps of that shape drawn from the image's seed, so each tile's eps is its slice; the crops are
    disjoint pieces of one resized image, whose iid eps this is, and the thumbnail's eps is its own slice."""
    return add_diffusion_noise(pixels, step=noise.step, schedule=noise.schedule, seed=noise.seed)


def noised_grid_patches(patches: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """One image's `[grid_h * grid_w, C * T * P * P]` patches, noised with one eps of the image's `[C, H, W]`
    layout, patchified as the image processors of Qwen2-VL, Qwen3-VL, Qwen3.5 and GLM-4.1V patchify (rows of
    merge x merge blocks, then C, T, P, P), with the processor's own patch, merge and temporal sizes: every temporal
    copy of a patch sees the same eps."""
    image_processor = noise.processor.image_processor
    patch, merge = image_processor.patch_size, image_processor.merge_size
    frames = image_processor.temporal_patch_size
    _, grid_h, grid_w = noise.batch["image_grid_thw"][noise.index].tolist()
    channels = patches.shape[1] // (frames * patch * patch)
    eps = diffusion_noise((channels, grid_h * patch, grid_w * patch), noise.seed)
    eps_patches = (
        eps.view(channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
        .permute(1, 4, 2, 5, 0, 3, 6)
        .reshape(grid_h * grid_w, channels, 1, patch * patch)
    )
    copies = patches.view(grid_h * grid_w, channels, frames, patch * patch)
    return diffuse(copies, eps_patches, step=noise.step, schedule=noise.schedule).reshape(patches.shape)


def noised_anyres_patches(patches: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """One image's `[P_max, C, S, S]` LLaVA-NeXT patches: the base patch (the whole image resized to S x S) noised
    with its own eps, the high-resolution patches with one eps on the canvas they are cropped from, cropped as the
    processor crops (rows of patches, left to right). The canvas's letterbox (the margins that pad the resized image
    to its grid resolution) and the zero patches that fill the batch's patch count keep the processor's values."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    channels, side = patches.shape[1], patches.shape[-1]
    height, width = noise.batch["image_sizes"][noise.index].tolist()
    canvas_h, canvas_w = select_best_resolution((height, width), noise.processor.image_processor.image_grid_pinpoints)
    # the size the image is resized to inside the canvas, from its size alone (the tensor is read for its shape)
    content_h, content_w = get_patch_output_size(
        torch.empty(0, height, width), (canvas_h, canvas_w), input_data_format=ChannelDimension.FIRST
    )
    top, left = (canvas_h - content_h) // 2, (canvas_w - content_w) // 2
    crops = (canvas_h // side) * (canvas_w // side)
    eps = diffusion_noise((channels * (side * side + canvas_h * canvas_w),), noise.seed)
    base_eps, canvas_eps = eps.split([channels * side * side, channels * canvas_h * canvas_w])
    content = torch.zeros((1, canvas_h, canvas_w), dtype=torch.bool)
    content[:, top : top + content_h, left : left + content_w] = True

    noised = patches.clone()
    noised[0] = diffuse(patches[0], base_eps.view(channels, side, side), step=noise.step, schedule=noise.schedule)
    crop_values = patches[1 : 1 + crops]
    noised_crops = diffuse(
        crop_values,
        canvas_tiles(canvas_eps.view(channels, canvas_h, canvas_w), side),
        step=noise.step,
        schedule=noise.schedule,
    )
    noised[1 : 1 + crops] = torch.where(canvas_tiles(content, side).to(patches.device), noised_crops, crop_values)
    return noised


def canvas_tiles(canvas: torch.Tensor, side: int) -> torch.Tensor:
    """`[c, H, W]` -> `[tiles, c, side, side]`, rows of tiles left to right, as LLaVA-NeXT's and Llama 4's image
    processors cut their canvases."""
    channels, height, width = canvas.shape
    rows = canvas.view(channels, height // side, side, width // side, side)
    return rows.permute(1, 3, 0, 2, 4).reshape(-1, channels, side, side)


def noised_canvas_tiles(tiles: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """One image's `[T, C, S, S]` Llama 4 tiles: the canvas tiles noised with one eps on the canvas they are cut
    from, on the resized image's pixels only (the padding right of and below it keeps the processor's values), and
    the global tile, where there is one, with its own eps (it is the whole image resized, not a piece of the canvas).
    The canvas and the resized image's extent are the processor's, from the image's size as LLaMA-Factory's plugin
    hands it to the processor."""
    from transformers.image_utils import SizeDict
    from transformers.models.llama4.image_processing_llama4 import (
        find_supported_resolutions,
        get_best_fit,
        get_max_res_without_distortion,
    )

    image_processor = noise.processor.image_processor
    side = image_processor.size["height"]
    received = noise.mm_plugin._preprocess_image(
        Image.fromarray(noise.loaded),
        image_max_pixels=getattr(noise.processor, "image_max_pixels", 768 * 768),
        image_min_pixels=getattr(noise.processor, "image_min_pixels", 32 * 32),
    )
    height, width = received.height, received.width
    resolutions = find_supported_resolutions(image_processor.max_patches, SizeDict(height=side, width=side))
    canvas_h, canvas_w = get_best_fit(
        (height, width), torch.tensor(resolutions), resize_to_max_canvas=image_processor.resize_to_max_canvas
    ).tolist()
    if image_processor.resize_to_max_canvas:
        bound = (canvas_h, canvas_w)
    else:  # the processor upsamples an image to at most one tile's side
        bound = (min(max(height, side), canvas_h), min(max(width, side), canvas_w))
    content_h, content_w = (max(extent, 1) for extent in get_max_res_without_distortion((height, width), bound))
    canvas_count = (canvas_h // side) * (canvas_w // side)
    if tiles.shape[0] != canvas_count + (canvas_count > 1):
        raise ValueError(
            f"an image of {height}x{width} pixels has {tiles.shape[0]} tiles in the batch, but Llama 4's image "
            f"processor cuts it into {canvas_count} tiles of a {canvas_h}x{canvas_w} canvas"
            f"{' and a global tile' if canvas_count > 1 else ''}"
        )
    channels = tiles.shape[1]
    global_tiles = tiles.shape[0] - canvas_count
    eps = diffusion_noise((channels * (canvas_h * canvas_w + global_tiles * side * side),), noise.seed)
    canvas_eps, global_eps = eps.split([channels * canvas_h * canvas_w, channels * global_tiles * side * side])
    content = torch.zeros((1, canvas_h, canvas_w), dtype=torch.bool)
    content[:, :content_h, :content_w] = True
    noised = tiles.clone()
    canvas_values = tiles[:canvas_count]
    noised_canvas = diffuse(
        canvas_values,
        canvas_tiles(canvas_eps.view(channels, canvas_h, canvas_w), side),
        step=noise.step,
        schedule=noise.schedule,
    )
    noised[:canvas_count] = torch.where(canvas_tiles(content, side).to(tiles.device), noised_canvas, canvas_values)
    if global_tiles:
        noised[canvas_count:] = diffuse(
            tiles[canvas_count:], global_eps.view(1, channels, side, side), step=noise.step, schedule=noise.schedule
        )
    return noised


def noised_padded_image(pixels: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """One image's `[C, H_max, W_max]`: VCD's noise on its `image_sizes` corner (eps of that size); the zeros that
    pad it to the batch's largest image stay zeros."""
    height, width = noise.batch["image_sizes"][noise.index].tolist()
    noised = pixels.clone()
    image = pixels[:, :height, :width]
    eps = diffusion_noise(tuple(image.shape), noise.seed)
    noised[:, :height, :width] = diffuse(image, eps, step=noise.step, schedule=noise.schedule)
    return noised


# v' (`ue_noise_space: pixel_values`) of one image's entries of `pixel_values`, by `ModelFamily.pixel_layout`
NOISED_IMAGE_BY_PIXEL_LAYOUT: dict[str, Callable[[torch.Tensor, ImageNoise], torch.Tensor]] = {
    "stacked": noised_stacked_image,
    "grid_patches": noised_grid_patches,
    "anyres_patches": noised_anyres_patches,
    "padded_images": noised_padded_image,
    "tiles": noised_stacked_image,
    "canvas_tiles": noised_canvas_tiles,
}


@dataclass(frozen=True)
class SecondImageDraw:
    """One second image of one image: what it is, its seed, and (as `ImageNoise`) where the image lies."""

    image: SecondImage
    seed: int
    index: int
    batch: dict
    processor: Any

    def drawn(self, image: torch.Tensor) -> torch.Tensor:
        """The second image of `image` `[C, T, H, W]` (T = 1 for a stacked image)."""
        if self.image.kind == "crop":  # one box for every channel and temporal copy
            return mdpo_crop(image.flatten(0, 1), self.seed).view(image.shape)
        if self.image.kind == "zeros":
            return torch.zeros_like(image)
        channels, _, height, width = image.shape
        return gaussian_image((channels, 1, height, width), self.seed).expand(image.shape).to(image.dtype)


def second_stacked_image(pixels: torch.Tensor, draw: SecondImageDraw) -> torch.Tensor:
    return draw.drawn(pixels.unsqueeze(1)).squeeze(1)


def second_grid_patches(patches: torch.Tensor, draw: SecondImageDraw) -> torch.Tensor:
    """Qwen2-VL's patches laid back out as the image, drawn on, and patchified to the same grid."""
    image_processor = draw.processor.image_processor
    patch, merge = image_processor.patch_size, image_processor.merge_size
    _, grid_h, grid_w = draw.batch["image_grid_thw"][draw.index].tolist()
    image = unpatchify_grid(patches, grid_h, grid_w, merge, patch)
    image = draw.drawn(image.view(-1, image_processor.temporal_patch_size, *image.shape[1:]))
    return patchify_grid(image.flatten(0, 1), merge, patch)


SECOND_IMAGE_BY_PIXEL_LAYOUT: dict[str, Callable[[torch.Tensor, SecondImageDraw], torch.Tensor]] = {
    "stacked": second_stacked_image,
    "grid_patches": second_grid_patches,
}


def check_second_images(
    family: ModelFamily, second_images: dict[str, SecondImage], method: str, response_images: bool = False
) -> None:
    """Refuse a method's second images (and images per response) on a pixel layout they are not built for."""
    needed = [*second_images, *((CHOSEN_IMAGE_COLUMN, REJECTED_IMAGE_COLUMN) if response_images else ())]
    if needed and family.pixel_layout not in SECOND_IMAGE_BY_PIXEL_LAYOUT:
        built = [served.name for served in FAMILIES if served.pixel_layout in SECOND_IMAGE_BY_PIXEL_LAYOUT]
        raise UEDPOUserError(
            f"`ue_weighting: {method}` needs second images ({', '.join(needed)}), which are built for the "
            f"{' and '.join(SECOND_IMAGE_BY_PIXEL_LAYOUT)} pixel layouts only, not for {family.name}'s "
            f"{family.pixel_layout}; use a model of {', '.join(built)}, or another method."
        )


def check_crop_to_patches(family: ModelFamily, crop_to_patches: bool) -> None:
    """Refuse LLaMA-Factory's `crop_to_patches: true` for a family whose plugin does not read it (no effect)."""
    if crop_to_patches and family.crop_to_patches_kwargs is None:
        readers = [reader.name for reader in FAMILIES if reader.crop_to_patches_kwargs is not None]
        raise UEDPOUserError(
            f"`crop_to_patches: true` has no effect on {family.name}: LLaMA-Factory's {family.mm_plugin} does not "
            f"read it (it tiles images for {', '.join(readers)} only); remove it."
        )


@dataclass
class UEDPODataCollator(PairwiseDataCollatorWithPadding):
    noise_step: int = 500
    noise_schedule: str = "sigmoid"
    noise_space: str = "pixel_values"
    noise_seed: int = 0
    with_noised_image: bool = True  # v' for the methods that read it (PreferenceMethod.reads_noised_image)
    with_row_digests: bool = True  # content digests, the keys of the `ue_precompute_ref` cache
    second_images: dict[str, SecondImage] = field(default_factory=dict)  # PreferenceMethod.second_images
    response_images: bool = False  # PreferenceMethod.reads_response_images

    @property
    def family(self) -> ModelFamily:
        return template_family(self.template, None if self.model is None else self.model.config.model_type)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pair_images = [list(feature.get("images") or []) for feature in features]
        try:
            batch = super().__call__(features)
        except OSError as error:  # PIL's error names no row, often no file
            named = unreadable_batch_image_error(pair_images)
            if named is None:
                raise
            raise named from error
        has_image = [len(images) > 0 for images in pair_images]
        batch[HAS_IMAGE] = torch.tensor(has_image + has_image, dtype=torch.bool)
        pair_pixels = [[loaded_pixels(image) for image in images] for images in pair_images]
        side_pixels = {"chosen": pair_pixels, "rejected": pair_pixels}
        if self.response_images and any(pair_images):
            response_images = {
                side: column_images(features, column)
                for side, column in (("chosen", CHOSEN_IMAGE_COLUMN), ("rejected", REJECTED_IMAGE_COLUMN))
            }
            batch["pixel_values"] = self._processed_pixel_values(
                response_images["chosen"] + response_images["rejected"], batch
            )
            side_pixels = {
                side: [[loaded_pixels(image) for image in images] for images in side_images]
                for side, side_images in response_images.items()
            }
        if self.with_noised_image:
            batch[NOISED_PIXEL_VALUES] = self._noised_batch_pixel_values(pair_pixels, batch)
        for name, second_image in self.second_images.items():
            batch[SECOND_PIXEL_VALUES + name] = self._second_pixel_values(
                name, second_image, features, pair_pixels, batch
            )
        if self.with_row_digests:
            batch[ROW_DIGEST] = self._row_digests(features, side_pixels)
        return batch

    def _noised_batch_pixel_values(self, pair_pixels: list[list[np.ndarray]], batch) -> torch.Tensor:
        if not any(pair_pixels):  # only LLaMA-Factory's blank stand-in image: its v' is never used
            return batch["pixel_values"].clone()
        if self.noise_space == "pixel_values":
            return self._noised_pixel_values(pair_pixels, batch)
        return self._noised_image_pixel_values(pair_pixels, batch)

    def _row_digests(
        self, features: list[dict[str, Any]], side_pixels: dict[str, list[list[np.ndarray]]]
    ) -> torch.Tensor:
        """A 64-bit content digest per row (chosen rows, then rejected): token ids, labels and the row's images as
        loaded (each response's own, where it has one; how the processor turns them into `pixel_values` is part of
        the cache's reference identity)."""
        digests = []
        for side in ("chosen", "rejected"):
            for feature, pixels in zip(features, side_pixels[side]):
                row = hashlib.sha256()
                for tokens in (feature[f"{side}_input_ids"], feature[f"{side}_labels"]):
                    row.update(_digest(np.asarray(tokens, dtype=np.int64)))
                for image in pixels:
                    row.update(_digest(image))
                digests.append(int.from_bytes(row.digest()[:8], "little", signed=True))
        return torch.tensor(digests, dtype=torch.long)

    def image_noise_seed(self, pixels: np.ndarray) -> int:
        """The seed of an image's eps: the run's noise seed, the image as loaded (`loaded_pixels`) and k."""
        return sample_noise_seed(self.noise_seed, _digest(pixels), self.noise_step)

    def _noised_pixel_values(self, pair_pixels: list[list[np.ndarray]], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """VCD's v': each image's entries of `pixel_values` noised as its family's layout holds them. The batch holds
        the chosen rows' images, then the rejected rows' (the same images again): both rows of a pair see one v'."""
        family = self.family
        loaded = [pixels for images in pair_pixels for pixels in images] * 2
        noised_image = NOISED_IMAGE_BY_PIXEL_LAYOUT[family.pixel_layout]
        mm_plugin = self.template.mm_plugin
        return family.joined_images(
            [
                noised_image(
                    values,
                    ImageNoise(
                        self.image_noise_seed(pixels),
                        index,
                        batch,
                        self.processor,
                        self.noise_step,
                        self.noise_schedule,
                        pixels,
                        mm_plugin,
                    ),
                )
                for index, (values, pixels) in enumerate(zip(self._split_images(batch), loaded, strict=True))
            ]
        )

    def _split_images(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """`pixel_values` as one tensor per image (tiles are counted by each image's run of placeholders)."""
        family = self.family
        placeholder = (
            self.processor.image_token_id
            if family.image_token is None
            else self.tokenizer.convert_tokens_to_ids(family.image_token)
        )
        run_ids = tuple(self.tokenizer.convert_tokens_to_ids(token) for token in family.image_run_tokens)
        return family.split_images(batch, (placeholder,), run_ids)

    def _second_pixel_values(
        self, name: str, second_image: SecondImage, features, pair_pixels: list[list[np.ndarray]], batch
    ) -> torch.Tensor:
        """A second image of every image: read from its column, or drawn from the run's noise seed, the image as
        loaded and the name; the rejected rows' images are the chosen rows' again, so both rows of a pair see one
        second image."""
        if not any(pair_pixels):  # only LLaMA-Factory's blank stand-in image: never read
            return batch["pixel_values"].clone()
        if second_image.kind == "column":
            supplied = column_images(features, second_image.column)
            return self._processed_pixel_values(supplied + supplied, batch)
        if second_image.kind == "region_noise":
            return self._region_noised_pixel_values(column_images(features, second_image.column), pair_pixels, batch)
        family = self.family
        seeds = [
            sample_noise_seed(self.noise_seed, _digest(pixels) + name.encode(), 0)
            for images in pair_pixels
            for pixels in images
        ] * 2
        second = SECOND_IMAGE_BY_PIXEL_LAYOUT[family.pixel_layout]
        return family.joined_images(
            [
                second(pixels, SecondImageDraw(second_image, seed, index, batch, self.processor))
                for index, (pixels, seed) in enumerate(zip(self._split_images(batch), seeds, strict=True))
            ]
        )

    def _region_noised_pixel_values(
        self, masks: list[list[Image.Image]], pair_pixels: list[list[np.ndarray]], batch
    ) -> torch.Tensor:
        """MFPO's m': v' where the processed mask is nearer white than black (`core.second_images.mask_inside`), the
        clean values elsewhere; a mask without a pixel of grey value >= 128 is all inside (global noise)."""
        masks = [
            [mask.convert("RGB") if np.asarray(mask.convert("L")).max() >= 128 else _filled(mask, 255) for mask in row]
            for row in masks
        ]
        processed = {
            name: self._processed_pixel_values(rows + rows, batch)
            for name, rows in (
                ("mask", masks),
                ("black", [[_filled(mask, 0) for mask in row] for row in masks]),
                ("white", [[_filled(mask, 255) for mask in row] for row in masks]),
            )
        }
        inside = mask_inside(processed["mask"], processed["black"], processed["white"])
        return region_noised(batch["pixel_values"], self._noised_batch_pixel_values(pair_pixels, batch), inside)

    def _processed_pixel_values(self, row_images: list[list], batch, fix: str = "") -> torch.Tensor:
        """`pixel_values` of other images in the places of the batch's (`row_images`: one list per batch row, the
        chosen rows, then the rejected rows), through the template's multimodal plugin as the batch's own images:
        refused unless they come out in the batch's layout (shape, grid, sizes)."""
        imglens = [len(images) for images in row_images]
        zeros = [0] * len(row_images)
        mm_inputs = self.template.mm_plugin.get_mm_inputs(
            [image for images in row_images for image in images],
            [],
            [],
            imglens,
            zeros,
            zeros,
            batch["input_ids"].tolist(),
            self.processor,
        )
        differing = []
        for key in self.family.image_keys:
            if key not in batch:
                continue
            produced = mm_inputs.get(key)
            if produced is None or produced.shape != batch[key].shape:
                differing.append(key)
            elif key != "pixel_values" and not torch.equal(produced, batch[key]):
                differing.append(key)
        if differing:
            raise RuntimeError(
                f"images in place of the batch's produced other {', '.join(differing)} (pixel_values of shape "
                f"{tuple(mm_inputs['pixel_values'].shape)} for {tuple(batch['pixel_values'].shape)}){fix}"
            )
        return mm_inputs["pixel_values"]

    def _noised_image_pixel_values(self, pair_pixels: list[list[np.ndarray]], batch) -> torch.Tensor:
        noised_pair_images = [[self._tpo_noised_image(pixels) for pixels in images] for images in pair_pixels]
        row_images = noised_pair_images + noised_pair_images  # chosen rows, then rejected rows: the same v'
        return self._processed_pixel_values(row_images, batch, "; use `ue_noise_space: pixel_values` for this model.")

    def _tpo_noised_image(self, pixels: np.ndarray) -> Image.Image:
        height, width, channels = pixels.shape
        noise = diffusion_noise((channels, height, width), self.image_noise_seed(pixels))
        noised = tpo_noised_image(torch.from_numpy(pixels), noise, step=self.noise_step, schedule=self.noise_schedule)
        return Image.fromarray(noised.numpy())


def column_images(features: list[dict[str, Any]], column: str) -> list[list[Image.Image]]:
    """The images of one of the dataset columns a method reads (`image_columns`), per pair, as loaded."""
    prepared = prepared_column(column)
    if any(prepared not in feature for feature in features):
        raise UEDPOUserError(
            f"the prepared rows hold no `{prepared}` column (the dataset's `{column}`), which the method reads: they "
            "were prepared without it (LLaMA-Factory's `tokenized_path`). Prepare the data again with this method's "
            "keys (`overwrite_cache: true`, and a new `tokenized_path`)."
        )
    images = []
    for feature in features:
        row = []
        for source in feature[prepared] or []:
            try:
                row.append(load_image_strictly(source))
            except OSError as error:  # checked to open before training; changed since, or truncated
                raise UEDPOUserError(
                    f"image {describe_image_source(source)} of the dataset's `{column}` column cannot be read: "
                    f"{error}. Replace the file with a complete copy, or remove its row."
                ) from error
        images.append(row)
    return images


def _filled(image: Image.Image, value: int) -> Image.Image:
    return Image.new("RGB", image.size, (value, value, value))
