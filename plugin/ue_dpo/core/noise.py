"""The forward-diffusion corruption that makes the counterfactual image v'.

v' = sqrt(abar_k) * v + sqrt(1 - abar_k) * eps, with VCD's (and TPO's) 1000-step schedule.
"""

import hashlib
from typing import Literal

import torch

NUM_DIFFUSION_STEPS = 1000
NoiseSchedule = Literal["sigmoid", "linear"]


def diffusion_betas(schedule: NoiseSchedule = "sigmoid") -> torch.Tensor:
    """Per-step variances, in the precision the schedule's source computes them.

    sigmoid (VCD/TPO, float32 as both compute it): sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    linear (DDPM, float64):                          linspace(1e-4, 0.02, 1000)
    """
    if schedule == "sigmoid":
        ramp = torch.linspace(-6.0, 6.0, NUM_DIFFUSION_STEPS, dtype=torch.float32)
        return torch.sigmoid(ramp) * (5e-3 - 1e-5) + 1e-5
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, NUM_DIFFUSION_STEPS, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {schedule!r}; use 'sigmoid' or 'linear'")


def noise_coefficients(step: int, schedule: NoiseSchedule = "sigmoid") -> tuple[float, float]:
    """(sqrt(abar_k), sqrt(1 - abar_k)) with abar = cumprod(1 - betas), k = `step` in [0, 999]."""
    if not 0 <= step < NUM_DIFFUSION_STEPS:
        raise ValueError(f"noise step must be in [0, {NUM_DIFFUSION_STEPS - 1}], got {step}")
    alpha_bar = torch.cumprod(1.0 - diffusion_betas(schedule), dim=0)[step]
    return float(alpha_bar.sqrt()), float((1.0 - alpha_bar).sqrt())


def sample_noise_seed(base_seed: int, sample_digest: bytes, step: int) -> int:
    """A 63-bit seed that depends only on the run seed, the sample's content and the noise step."""
    material = b"%d|%d|" % (base_seed, step) + sample_digest
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "little") >> 1


def diffusion_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """eps ~ N(0, 1), float32, drawn on CPU from `seed`: the same on every device and rank for the same seed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def diffuse(values: torch.Tensor, noise: torch.Tensor, *, step: int, schedule: NoiseSchedule = "sigmoid"):
    """sqrt(abar_k) * values + sqrt(1 - abar_k) * noise in float32 (`noise` broadcasts), in `values`' dtype."""
    signal, noise_scale = noise_coefficients(step, schedule)
    noised = signal * values.float() + noise_scale * noise.to(values.device)
    return noised.to(values.dtype)


def add_diffusion_noise(
    values: torch.Tensor, *, step: int, seed: int, schedule: NoiseSchedule = "sigmoid"
) -> torch.Tensor:
    """Corrupt `values` to diffusion step `step` with eps of their shape drawn from `seed`."""
    return diffuse(values, diffusion_noise(tuple(values.shape), seed), step=step, schedule=schedule)


def wrapped_image_bytes(unit_values: torch.Tensor) -> torch.Tensor:
    """uint8 bytes of a float image as torchvision's `ToPILImage` makes them (`mul(255).byte()`): x * 255 is
    truncated toward zero and wraps modulo 256, so out-of-range values are not clamped (-0.30 -> 180, 1.3 -> 75)."""
    return torch.trunc(unit_values.float() * 255).to(torch.int64).remainder(256).to(torch.uint8)


def tpo_noised_image(pixels: torch.Tensor, noise: torch.Tensor, *, step: int, schedule: NoiseSchedule = "sigmoid"):
    """TPO's v' of a `[H, W, C]` uint8 image, as uint8 `[H, W, C]`: `ToTensor` (x / 255, `[C, H, W]`), `diffuse`
    with `[C, H, W]` noise, then `ToPILImage`'s wrapping byte conversion."""
    unit = pixels.permute(2, 0, 1).float().div(255)
    return wrapped_image_bytes(diffuse(unit, noise, step=step, schedule=schedule)).permute(1, 2, 0)
