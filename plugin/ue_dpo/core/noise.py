"""The forward-diffusion corruption that makes the counterfactual image v'.

v' = sqrt(abar_k) * v + sqrt(1 - abar_k) * eps, with VCD's (and TPO's) 1000-step schedule.
"""

import hashlib
from typing import Literal

import torch

NUM_DIFFUSION_STEPS = 1000
NoiseSchedule = Literal["sigmoid", "linear"]


def diffusion_betas(schedule: NoiseSchedule = "sigmoid") -> torch.Tensor:
    """Per-step variances, float64.

    sigmoid (VCD/TPO): sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    linear (DDPM):     linspace(1e-4, 0.02, 1000)
    """
    if schedule == "sigmoid":
        ramp = torch.linspace(-6.0, 6.0, NUM_DIFFUSION_STEPS, dtype=torch.float64)
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


def add_diffusion_noise(
    values: torch.Tensor, *, step: int, seed: int, schedule: NoiseSchedule = "sigmoid"
) -> torch.Tensor:
    """Corrupt `values` to diffusion step `step`; eps ~ N(0, 1) drawn on CPU from `seed`.

    Drawing on CPU makes v' identical on every device and rank for the same sample.
    """
    signal, noise_scale = noise_coefficients(step, schedule)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(values.shape, generator=generator, dtype=torch.float32)
    noised = signal * values.float() + noise_scale * eps.to(values.device)
    return noised.to(values.dtype)
