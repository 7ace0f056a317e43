"""The second images of the peer methods, on the processor's normalised tensors.

mDPO's m': torchvision's `RandomResizedCrop(size=(H, W), scale=(0.01, 0.2))` with the default ratio (3/4, 4/3),
re-implemented here (the box sampling of torchvision's `get_params`, then a bilinear, antialiased resize back to
(H, W)). V-DPO's ∅: all zeros, or images whose channel c is N(mean_c, std_c) (CLIP's constants, as V-DPO's
`sample_random_image` draws them straight into the normalised tensor). MFPO's m' from a region mask: v' inside the
mask, the clean image elsewhere, on the processor's tensors.
"""

import math

import torch
import torch.nn.functional as F

MDPO_CROP_SCALE = (0.01, 0.2)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # torchvision's
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = MDPO_CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as torchvision's `RandomResizedCrop.get_params` samples it: up to 10
    draws of an area share in `scale` and a log-uniform aspect ratio in `ratio`, else the central crop of the
    clamped ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator).item())
            return top, left, crop_height, crop_width
    image_ratio = width / height
    if image_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif image_ratio > max(ratio):
        crop_height, crop_width = height, int(round(height * max(ratio)))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The `box` of a `[..., H, W]` image, resized back to (H, W) bilinearly with antialiasing (torchvision's tensor
    resize), in float32 and back to the image's dtype."""
    top, left, crop_height, crop_width = box
    height, width = image.shape[-2:]
    crop = image[..., top : top + crop_height, left : left + crop_width].float()
    leading = crop.shape[:-2]
    resized = F.interpolate(
        crop.reshape(1, -1, crop_height, crop_width),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return resized.reshape(*leading, height, width).to(image.dtype)


def mdpo_crop(image: torch.Tensor, seed: int) -> torch.Tensor:
    """mDPO's m' of a `[..., H, W]` image: one crop box drawn from `seed`, shared by the leading dimensions."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return resized_crop(image, random_resized_crop_box(image.shape[-2], image.shape[-1], generator))


def gaussian_image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """V-DPO's random image, `[C, ...]` float32: channel c is N(CLIP mean_c, CLIP std_c) (3 channels)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    image = torch.randn(shape, generator=generator, dtype=torch.float32)
    mean = torch.tensor(CLIP_MEAN).view(-1, *[1] * (len(shape) - 1))
    std = torch.tensor(CLIP_STD).view(-1, *[1] * (len(shape) - 1))
    return image * std + mean


def unpatchify_grid(patches: torch.Tensor, grid_h: int, grid_w: int, merge: int, patch: int) -> torch.Tensor:
    """Qwen2-VL's `[grid_h * grid_w, C * T * P * P]` patches of one image back to `[C * T, H, W]` (C outer): its
    processor orders rows as (grid_h / merge, grid_w / merge, merge, merge) and features as (C, T, P, P)."""
    features = patches.shape[1]
    channels_frames = features // (patch * patch)
    blocks = patches.reshape(grid_h // merge, grid_w // merge, merge, merge, channels_frames, patch, patch)
    return blocks.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels_frames, grid_h * patch, grid_w * patch)


def patchify_grid(image: torch.Tensor, merge: int, patch: int) -> torch.Tensor:
    """The inverse of `unpatchify_grid`."""
    channels_frames, height, width = image.shape
    grid_h, grid_w = height // patch, width // patch
    blocks = image.reshape(channels_frames, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    return blocks.permute(1, 4, 2, 5, 0, 3, 6).reshape(grid_h * grid_w, channels_frames * patch * patch)


def mask_inside(mask: torch.Tensor, black: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """Where a mask image, processed as the images are (`mask`), is nearer the processed all-white image than the
    processed all-black one of its size: the processor's resizing and normalisation, read back as the mask."""
    return 2 * (mask.float() - black.float()) > white.float() - black.float()


def region_noised(clean: torch.Tensor, noised: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """MFPO's m': the noised values inside the mask, the clean values (bit for bit) outside."""
    return torch.where(inside, noised, clean)
