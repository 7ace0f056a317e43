"""The collator's counterfactual image v', against VCD's formula and TPO's pipeline written out with the libraries."""

import numpy as np
import pytest
import torch
from PIL import Image

from ue_dpo.core.noise import diffusion_noise, noise_coefficients
from ue_dpo.model_families import TEMPLATE_BY_MODEL_TYPE
from ue_dpo.synthetic.shapes import write_preference_dataset

STEP = 500
IMAGE_SIZE = (
    112  # larger than the tiny processors' input (LLaVA 28, Qwen2-VL and GLM-4.1V 56, Qwen3-VL 64): they resize
)


@pytest.fixture(scope="module")
def large_image_pairs(tmp_path_factory):
    return write_preference_dataset(tmp_path_factory.mktemp("large_images"), n_pairs=2, seed=3, image_size=IMAGE_SIZE)


def collated_modules(arch, request, dataset_dir, tmp_path, rows=2, **model_args):
    """(template, tokenizer module, the first `rows` rows) as `stage: ue_dpo` tokenizes them."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(model_dir),
            "stage": "rm",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "shapes_pref",
            "dataset_dir": str(dataset_dir),
            "template": TEMPLATE_BY_MODEL_TYPE[arch],
            "cutoff_len": 512,
            "output_dir": str(tmp_path / "out"),
            "report_to": "none",
            "overwrite_cache": True,
            **model_args,
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)[
        "train_dataset"
    ]
    return template, tokenizer_module, [dataset[row] for row in range(rows)]


def ue_collator(template, tokenizer_module, noise_space):
    from ue_dpo.llamafactory.collator import UEDPODataCollator

    return UEDPODataCollator(
        template=template,
        model=None,
        label_pad_token_id=-100,
        noise_step=STEP,
        noise_space=noise_space,
        noise_seed=11,
        with_row_digests=False,
        **tokenizer_module,
    )


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl", "glm4v"])
def test_patch_noise_is_vcds_noise_of_the_normalised_image_then_patchified(arch, request, large_image_pairs, tmp_path):
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(arch, request, large_image_pairs, tmp_path)
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    image_processor = tokenizer_module["processor"].image_processor
    patch, merge = image_processor.patch_size, image_processor.merge_size
    assert image_processor.temporal_patch_size == 2

    def patchified(image: torch.Tensor) -> torch.Tensor:  # the processor's own patchification of a [3, H, W] image
        return image_processor(
            images=[image], do_resize=False, do_rescale=False, do_normalize=False, return_tensors="pt"
        )["pixel_values"]

    clean_images = collator.family.split_images(batch, (collator.processor.image_token_id,))
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    noised_images = list(batch[NOISED_PIXEL_VALUES].split([len(image) for image in clean_images]))
    signal, noise = noise_coefficients(STEP)
    for clean, noised, pixels, (_, grid_h, grid_w) in zip(
        clean_images, noised_images, loaded, batch["image_grid_thw"].tolist(), strict=True
    ):
        frames = noised.view(grid_h * grid_w, 3, 2, patch * patch)
        assert torch.equal(frames[:, :, 0], frames[:, :, 1])  # both temporal copies of every patch: the same ε
        # x: the normalised image, read back from the clean patches (first temporal copy) and checked to patchify
        # back into them exactly
        image = (
            clean.view(grid_h // merge, grid_w // merge, merge, merge, 3, 2, patch, patch)[:, :, :, :, :, 0]
            .permute(4, 0, 2, 5, 1, 3, 6)
            .reshape(3, grid_h * patch, grid_w * patch)
        )
        assert torch.equal(patchified(image), clean)
        eps = diffusion_noise((3, grid_h * patch, grid_w * patch), collator.image_noise_seed(pixels))
        assert torch.equal(noised, patchified(signal * image + noise * eps))
    pairs = len(features)
    for pair in range(pairs):  # the chosen and the rejected row of a pair see the same v'
        assert torch.equal(noised_images[pair], noised_images[pairs + pair])
    assert not torch.equal(noised_images[0], noised_images[1])


def test_internvl_tiles_are_noised_with_one_eps_per_image_of_its_tiles_shape(request, large_image_pairs, tmp_path):
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(
        "internvl", request, large_image_pairs, tmp_path, crop_to_patches=True
    )
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    image_processor = tokenizer_module["processor"].image_processor
    signal, noise = noise_coefficients(STEP)
    # each image's tiles as InternVL's image processor cuts them (LLaMA-Factory's crop arguments): the crops, then
    # the thumbnail
    images = [Image.open(feature["images"][0]).convert("RGB") for feature in features] * 2
    tiles = [
        image_processor(images=[image], crop_to_patches=True, min_patches=1, max_patches=12, return_tensors="pt")
        for image in images
    ]
    tile_counts = [int(image_tiles["num_patches"][0]) for image_tiles in tiles]
    assert min(tile_counts) > 2  # crops and a thumbnail
    expected_clean = torch.cat([image_tiles["pixel_values"] for image_tiles in tiles])
    assert torch.equal(batch["pixel_values"], expected_clean)
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    expected_noised = torch.cat(
        [
            signal * image_tiles["pixel_values"]
            + noise * diffusion_noise(tuple(image_tiles["pixel_values"].shape), collator.image_noise_seed(pixels))
            for image_tiles, pixels in zip(tiles, loaded, strict=True)
        ]
    )
    assert torch.equal(batch[NOISED_PIXEL_VALUES], expected_noised)
    first, second = tile_counts[:2]
    assert not torch.equal(expected_noised[:first], expected_noised[first : first + second])


@pytest.mark.parametrize("arch", ["llava", "gemma3"])
def test_stacked_noise_is_vcds_noise_of_the_normalised_image(arch, request, large_image_pairs, tmp_path):
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(arch, request, large_image_pairs, tmp_path)
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    signal, noise = noise_coefficients(STEP)
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    for clean, noised, pixels in zip(batch["pixel_values"], batch[NOISED_PIXEL_VALUES], loaded, strict=True):
        eps = diffusion_noise(tuple(clean.shape), collator.image_noise_seed(pixels))
        assert torch.equal(noised, signal * clean + noise * eps)
    assert torch.equal(batch[NOISED_PIXEL_VALUES][:2], batch[NOISED_PIXEL_VALUES][2:])


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "internvl", "gemma3", "llama4"])
def test_image_noise_is_tpos_totensor_noise_topilimage_at_the_original_resolution(
    arch, request, large_image_pairs, tmp_path
):
    from llamafactory.data import PairwiseDataCollatorWithPadding
    from torchvision import transforms

    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES

    template, tokenizer_module, features = collated_modules(arch, request, large_image_pairs, tmp_path)
    collator = ue_collator(template, tokenizer_module, "image")
    noised_pixel_values = collator(features)[NOISED_PIXEL_VALUES]

    # TPO (alibaba/TPO `scaling_train.py`): ToTensor, VCD's float32 schedule, ToPILImage, then the processing of
    # the clean image. Here the clean image's processing is LLaMA-Factory's own collator, given TPO's v' as image.
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    alphas_prod = torch.cumprod(1 - betas, dim=0)
    signal, noise = torch.sqrt(alphas_prod)[STEP], torch.sqrt(1 - alphas_prod)[STEP]

    def tpo_noised(path: str) -> Image.Image:
        image = Image.open(path).convert("RGB")
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        tensor = transforms.ToTensor()(image)
        eps = diffusion_noise(tuple(tensor.shape), collator.image_noise_seed(np.array(image)))
        return transforms.ToPILImage()(signal * tensor + noise * eps)

    tpo_features = [{**feature, "images": [tpo_noised(path) for path in feature["images"]]} for feature in features]
    stock = PairwiseDataCollatorWithPadding(template=template, model=None, label_pad_token_id=-100, **tokenizer_module)
    expected = stock(tpo_features)["pixel_values"]
    assert torch.equal(noised_pixel_values, expected)


# mixed_sizes_dataset_dir's images (height, width) -> LLaVA-NeXT's canvas (the grid resolution its patches are cut
# from, by the tiny model's pinpoints 28 x 56, 56 x 28, 56 x 56) and the rows of its letterbox above and below
LLAVA_NEXT_CANVAS = {(56, 56): ((56, 56), 0), (28, 56): ((28, 56), 0), (42, 56): ((56, 56), 7)}


def white_content(image_processor, size: tuple[int, int]) -> torch.Tensor:
    """Where an image of `size` puts content in the processor's output: a white image, neither rescaled nor
    normalised, is 255 on its content and 0 on the processor's padding."""
    white = Image.new("RGB", (size[1], size[0]), (255, 255, 255))
    unnormalised = image_processor(images=[white], do_rescale=False, do_normalize=False, return_tensors="pt")
    return unnormalised["pixel_values"][0] > 127


def test_llava_next_noise_is_vcds_noise_of_the_real_patches_and_padding_stays(
    request, mixed_sizes_dataset_dir, tmp_path
):
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(
        "llava_next", request, mixed_sizes_dataset_dir, tmp_path, rows=3
    )
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    image_processor = tokenizer_module["processor"].image_processor
    side = image_processor.crop_size["height"]
    signal, noise = noise_coefficients(STEP)
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    assert batch["pixel_values"].shape[1] == 5  # the 2 x 2 grid and the base patch; the 28 x 56 image has 3
    padded_patches = letterboxed_rows = 0
    for clean, noised, pixels in zip(batch["pixel_values"], batch[NOISED_PIXEL_VALUES], loaded, strict=True):
        (canvas_h, canvas_w), letterbox = LLAVA_NEXT_CANVAS[pixels.shape[:2]]
        content = white_content(image_processor, pixels.shape[:2])
        real = 1 + (canvas_h // side) * (canvas_w // side)
        assert content.shape[0] == real and not clean[real:].any()
        eps = diffusion_noise((3 * (side * side + canvas_h * canvas_w),), collator.image_noise_seed(pixels))
        canvas_eps = eps[3 * side * side :].view(3, canvas_h, canvas_w)
        patch_eps = [eps[: 3 * side * side].view(3, side, side)] + [
            canvas_eps[:, row : row + side, column : column + side]
            for row in range(0, canvas_h, side)
            for column in range(0, canvas_w, side)
        ]
        expected = clean.clone()
        for patch, eps_patch in enumerate(patch_eps):
            expected[patch] = torch.where(content[patch], signal * clean[patch] + noise * eps_patch, clean[patch])
        assert torch.equal(noised, expected)
        crop_rows_outside = int((~content[1:]).all(-1).all(1).sum())  # letterbox rows of the crops, all channels
        assert crop_rows_outside == 2 * letterbox * (canvas_w // side)  # above and below, across the crops' columns
        padded_patches += len(clean) - real
        letterboxed_rows += crop_rows_outside
    assert padded_patches == 2 * 2 and letterboxed_rows == 2 * 28  # both rows of a pair hold their pair's image
    assert torch.equal(batch[NOISED_PIXEL_VALUES][:3], batch[NOISED_PIXEL_VALUES][3:])


# mixed_sizes_dataset_dir's images (height, width) -> Llama 4's canvas (tiles of 28 x 28, at most 4); the 42 x 56
# image fills the top 42 rows of its 56 x 56 canvas
LLAMA4_CANVAS = {(56, 56): (56, 56), (28, 56): (28, 56), (42, 56): (56, 56)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama4_noise_is_vcds_noise_of_the_canvas_on_its_real_pixels_and_the_global_tiles_own(
    dtype, request, mixed_sizes_dataset_dir, tmp_path
):
    """bfloat16: the released processor's normalisation (the tiny one rescales only, for a float32 model)."""
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(
        "llama4", request, mixed_sizes_dataset_dir, tmp_path, rows=3
    )
    image_processor = tokenizer_module["processor"].image_processor
    image_processor.do_normalize = dtype == torch.bfloat16
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    assert batch["pixel_values"].dtype == batch[NOISED_PIXEL_VALUES].dtype == dtype
    side = 28
    signal, noise = noise_coefficients(STEP)
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    clean_images = batch["pixel_values"].split([5, 3, 5] * 2)
    noised_images = batch[NOISED_PIXEL_VALUES].split([5, 3, 5] * 2)
    padding_value = -1.0 if dtype == torch.bfloat16 else 0.0
    padded_pixels = 0
    for clean, noised, pixels in zip(clean_images, noised_images, loaded, strict=True):
        canvas_h, canvas_w = LLAMA4_CANVAS[pixels.shape[:2]]
        canvas_tiles = (canvas_h // side) * (canvas_w // side)
        white = Image.new("RGB", (pixels.shape[1], pixels.shape[0]), (255, 255, 255))
        content = (
            image_processor([white], do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"] > 127
        )
        assert len(clean) == canvas_tiles + 1 and content[canvas_tiles].all()  # the global tile: all image
        eps = diffusion_noise((3 * (canvas_h * canvas_w + side * side),), collator.image_noise_seed(pixels))
        canvas_eps = eps[: 3 * canvas_h * canvas_w].view(3, canvas_h, canvas_w)
        tile_eps = [
            canvas_eps[:, row : row + side, column : column + side]
            for row in range(0, canvas_h, side)
            for column in range(0, canvas_w, side)
        ] + [eps[3 * canvas_h * canvas_w :].view(3, side, side)]
        expected = clean.clone()
        for tile, eps_tile in enumerate(tile_eps):
            formula = (signal * clean[tile].float() + noise * eps_tile).to(dtype)
            expected[tile] = torch.where(content[tile], formula, clean[tile])
        assert torch.equal(noised, expected)
        assert torch.all(noised[~content.expand_as(clean)] == padding_value)
        padded_pixels += int((~content).sum())
    assert padded_pixels == 2 * 3 * 14 * 56  # the 42 x 56 image's 14 rows under it, in both rows of its pair
    assert torch.equal(batch[NOISED_PIXEL_VALUES][:13], batch[NOISED_PIXEL_VALUES][13:])


def test_mistral3_noise_is_vcds_noise_of_each_image_and_the_padding_stays_zero(
    request, mixed_sizes_dataset_dir, tmp_path
):
    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules("mistral3", request, mixed_sizes_dataset_dir, tmp_path)
    collator = ue_collator(template, tokenizer_module, "pixel_values")
    batch = collator(features)
    image_processor = tokenizer_module["processor"].image_processor
    signal, noise = noise_coefficients(STEP)
    loaded = [loaded_pixels(feature["images"][0]) for feature in features] * 2
    sizes = []
    for clean, noised, pixels in zip(batch["pixel_values"], batch[NOISED_PIXEL_VALUES], loaded, strict=True):
        alone = image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")["pixel_values"][0]
        height, width = alone.shape[1:]
        sizes.append((height, width))
        assert torch.equal(clean[:, :height, :width], alone)
        eps = diffusion_noise((3, height, width), collator.image_noise_seed(pixels))
        expected = torch.zeros_like(clean)
        expected[:, :height, :width] = signal * alone + noise * eps
        assert torch.equal(noised, expected)
    assert sizes == [(56, 56), (28, 56)] * 2  # the second image is padded with 28 rows of zeros
    assert torch.equal(batch[NOISED_PIXEL_VALUES][:2], batch[NOISED_PIXEL_VALUES][2:])


@pytest.mark.parametrize("arch", ["llava_next", "mistral3"])
def test_image_noise_of_images_of_different_sizes_is_the_processors_output_for_tpos_images(
    arch, request, mixed_sizes_dataset_dir, tmp_path
):
    from llamafactory.data import PairwiseDataCollatorWithPadding

    from ue_dpo.llamafactory.collator import NOISED_PIXEL_VALUES, loaded_pixels

    template, tokenizer_module, features = collated_modules(arch, request, mixed_sizes_dataset_dir, tmp_path)
    collator = ue_collator(template, tokenizer_module, "image")
    noised_pixel_values = collator(features)[NOISED_PIXEL_VALUES]
    tpo_features = [
        {**feature, "images": [collator._tpo_noised_image(loaded_pixels(image)) for image in feature["images"]]}
        for feature in features
    ]
    stock = PairwiseDataCollatorWithPadding(template=template, model=None, label_pad_token_id=-100, **tokenizer_module)
    expected = stock(tpo_features)
    assert torch.equal(noised_pixel_values, expected["pixel_values"])
    assert not torch.equal(noised_pixel_values, stock(features)["pixel_values"])


def test_a_bfloat16_image_is_noised_in_float32_and_stays_bfloat16():
    from ue_dpo.llamafactory.collator import ImageNoise, noised_padded_image

    generator = torch.Generator().manual_seed(0)
    pixels = torch.zeros(3, 6, 8, dtype=torch.bfloat16)
    pixels[:, :4, :5] = torch.randn(3, 4, 5, generator=generator).to(torch.bfloat16)
    noise_of = ImageNoise(
        seed=5,
        index=1,
        batch={"image_sizes": torch.tensor([[6, 8], [4, 5]])},
        processor=None,
        step=STEP,
        schedule="sigmoid",
        loaded=np.zeros((4, 5, 3), dtype=np.uint8),
        mm_plugin=None,
    )
    noised = noised_padded_image(pixels, noise_of)
    signal, noise = noise_coefficients(STEP)
    expected = torch.zeros_like(pixels)
    expected[:, :4, :5] = (signal * pixels[:, :4, :5].float() + noise * diffusion_noise((3, 4, 5), 5)).bfloat16()
    assert noised.dtype == torch.bfloat16 and torch.equal(noised, expected)
