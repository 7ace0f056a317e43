"""The peer methods' losses, the chunked reference KL and the second images, against naive references written from
the formulas (float64 loops over pairs, full-vocabulary softmax), gradients included."""

import math

import pytest
import torch

from ue_dpo.core.chunked import chunked_reference_kl
from ue_dpo.core.peer_losses import chip_loss, from_first_difference, mdpo_loss, vdpo_loss
from ue_dpo.core.second_images import (
    CLIP_MEAN,
    CLIP_STD,
    gaussian_image,
    mdpo_crop,
    patchify_grid,
    random_resized_crop_box,
    resized_crop,
    unpatchify_grid,
)

PAIRS = 3


def neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))


def scores(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(PAIRS, generator=generator) * 3).requires_grad_() for _ in range(count)]


def finite_difference_gradients(naive, inputs: list[torch.Tensor], step: float = 1e-6) -> list[torch.Tensor]:
    """d naive / d input by central differences in float64 (naive takes lists of floats)."""
    values = [tensor.detach().double().tolist() for tensor in inputs]
    gradients = []
    for index, vector in enumerate(values):
        gradient = []
        for position in range(len(vector)):
            shifted = []
            for sign in (1, -1):
                moved = [list(v) for v in values]
                moved[index][position] += sign * step
                shifted.append(naive(*moved))
            gradient.append((shifted[0] - shifted[1]) / (2 * step))
        gradients.append(torch.tensor(gradient, dtype=torch.float64))
    return gradients


def check_against(loss: torch.Tensor, naive, inputs: list[torch.Tensor], *, differentiable: list[bool]) -> None:
    expected = naive(*[tensor.detach().double().tolist() for tensor in inputs])
    assert loss.sum().item() == pytest.approx(expected, rel=1e-5)
    gradients = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    for gradient, reference, flows in zip(gradients, finite_difference_gradients(naive, inputs), differentiable):
        if flows:
            torch.testing.assert_close(gradient.double(), reference, rtol=1e-5, atol=1e-6)
        else:  # stop-gradient: the naive function still depends on it, autograd must not
            assert gradient is None or torch.count_nonzero(gradient) == 0


def test_mdpo_loss_and_gradients_match_the_three_terms():
    beta = 0.7
    inputs = scores(6, seed=0)
    has_image = torch.tensor([True, False, True])

    def naive(sw, sl, rw, rl, sw2, rw2):
        total = 0.0
        for k in range(PAIRS):
            total += neg_log_sigmoid(beta * ((sw[k] - sl[k]) - (rw[k] - rl[k])))
            if has_image[k]:
                total += neg_log_sigmoid(beta * ((sw[k] - sw2[k]) - (rw[k] - rw2[k])))
            total += neg_log_sigmoid(beta * (sw[k] - rw[k]))
        return total

    result = mdpo_loss(*inputs, beta=beta, image_term_mask=has_image)
    check_against(result.losses, naive, inputs, differentiable=[True] * 6)
    assert result.terms["image_loss"][1] == 0


def test_mdpo_text_margin_replaces_the_text_term_only():
    inputs = scores(6, seed=8)
    margin = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    plain = mdpo_loss(*inputs, beta=0.3)
    replaced = mdpo_loss(*inputs, beta=0.3, text_margin=margin)
    expected = [neg_log_sigmoid(0.3 * value) for value in margin.tolist()]
    torch.testing.assert_close(replaced.terms["text_loss"].double(), torch.tensor(expected, dtype=torch.float64))
    for term in ("image_loss", "anchor_loss"):
        torch.testing.assert_close(replaced.terms[term], plain.terms[term], rtol=0, atol=0)
    (gradient,) = torch.autograd.grad(replaced.losses.sum(), margin)
    torch.testing.assert_close(gradient, -0.3 * torch.sigmoid(-0.3 * margin.detach()))


def test_chip_loss_and_gradients_match_one_sigmoid_over_the_sum():
    beta, alpha = 0.5, 0.3
    inputs = scores(8, seed=1)

    def naive(sw, sl, rw, rl, sw2, rw2, klw, kll):
        total = 0.0
        for k in range(PAIRS):
            h = ((sw[k] - sl[k]) - (rw[k] - rl[k])) + ((sw[k] - rw[k]) - (sw2[k] - rw2[k])) - alpha * (kll[k] - klw[k])
            total += neg_log_sigmoid(beta * h)
        return total

    result = chip_loss(*inputs, beta=beta, alpha=alpha)
    # KL_w enters under a stop-gradient
    check_against(result.losses, naive, inputs, differentiable=[True] * 6 + [False, True])


@pytest.mark.parametrize("gamma", [2.0, 1.0])
def test_vdpo_loss_and_gradients_match_the_guided_scores(gamma):
    beta, smoothing = 0.4, 0.1
    inputs = scores(6, seed=2)

    def naive(sw, sl, rw, rl, uw, ul):
        total = 0.0
        for k in range(PAIRS):
            guided_w = gamma * sw[k] - (gamma - 1) * uw[k]
            guided_l = gamma * sl[k] - (gamma - 1) * ul[k]
            h = (guided_w - rw[k]) - (guided_l - rl[k])
            total += (1 - smoothing) * neg_log_sigmoid(beta * h) + smoothing * neg_log_sigmoid(-beta * h)
        return total

    result = vdpo_loss(*inputs, beta=beta, gamma=gamma, label_smoothing=smoothing)
    check_against(result.losses, naive, inputs, differentiable=[True] * 4 + [False] * 2)


def test_vdpo_gamma_zero_leaves_no_gradient_to_the_policy():
    inputs = scores(6, seed=3)
    loss = vdpo_loss(*inputs, beta=0.1, gamma=0.0).losses.sum()
    for gradient in torch.autograd.grad(loss, inputs[:2]):
        assert torch.count_nonzero(gradient) == 0


def test_first_difference_span_starts_at_the_first_differing_token_of_each_pair():
    chosen = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 0]])
    rejected = torch.tensor([[5, 6, 9, 8], [1, 2, 3, 4]])
    chosen_mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    rejected_mask = torch.tensor([[True, True, True, True], [True, True, True, True]])
    kept_chosen, kept_rejected = from_first_difference(chosen, rejected, chosen_mask, rejected_mask)
    assert kept_chosen.tolist() == [[False, False, True, True], [False, False, False, False]]
    assert kept_rejected.tolist() == [[False, False, True, True], [False, False, False, True]]


@pytest.mark.parametrize("chunks", [(2, 3), (64, 64)])
def test_chunked_reference_kl_matches_the_full_softmax_with_gradients(chunks):
    generator = torch.Generator().manual_seed(4)
    tokens, width, vocab = 5, 6, 11
    hidden = torch.randn(tokens, width, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, requires_grad=True)
    bias = torch.randn(vocab, generator=generator, requires_grad=True)
    reference_hidden = torch.randn(tokens, width, generator=generator)
    reference_weight = torch.randn(vocab, width, generator=generator)
    reference_bias = torch.randn(vocab, generator=generator)
    upstream = torch.randn(tokens, generator=generator)

    divergence = chunked_reference_kl(
        hidden,
        weight,
        bias,
        reference_hidden,
        reference_weight,
        reference_bias,
        token_chunk_size=chunks[0],
        vocab_chunk_size=chunks[1],
    )
    gradients = torch.autograd.grad((divergence * upstream).sum(), (hidden, weight, bias))

    double = [tensor.detach().double().requires_grad_() for tensor in (hidden, weight, bias)]
    reference_log_p = torch.log_softmax((reference_hidden @ reference_weight.T + reference_bias).double(), dim=-1)
    log_p = torch.log_softmax(double[0] @ double[1].T + double[2], dim=-1)
    naive = (reference_log_p.exp() * (reference_log_p - log_p)).sum(-1)
    naive_gradients = torch.autograd.grad((naive * upstream.double()).sum(), double)
    torch.testing.assert_close(divergence.double(), naive.detach(), rtol=1e-5, atol=1e-6)
    for gradient, expected in zip(gradients, naive_gradients):
        torch.testing.assert_close(gradient.double(), expected, rtol=1e-5, atol=1e-5)


def test_reference_kl_is_zero_for_the_same_model():
    hidden, weight = torch.randn(3, 4), torch.randn(7, 4)
    divergence = chunked_reference_kl(
        hidden, weight, None, hidden, weight, None, token_chunk_size=2, vocab_chunk_size=3
    )
    torch.testing.assert_close(divergence, torch.zeros(3), atol=1e-6, rtol=0)


def test_crop_boxes_cover_one_to_twenty_percent_within_the_image_and_the_default_ratio():
    generator = torch.Generator().manual_seed(5)
    height, width = 48, 64
    areas = []
    for _ in range(200):
        top, left, crop_height, crop_width = random_resized_crop_box(height, width, generator)
        assert 0 <= top <= height - crop_height and 0 <= left <= width - crop_width
        areas.append(crop_height * crop_width / (height * width))
        # rounding each side to a whole pixel moves the ratio a little past (3/4, 4/3) on small crops
        assert 0.5 < crop_width / crop_height < 2.0
    # rounding the sides to pixels moves the area share by at most a side's half pixel
    assert 0.005 < min(areas) and max(areas) < 0.22
    assert min(areas) < 0.05 and max(areas) > 0.15  # the draws span the range


def test_resized_crop_is_the_box_resized_back_to_the_original_size():
    image = torch.arange(3 * 8 * 10, dtype=torch.float32).view(3, 8, 10)
    whole = resized_crop(image, (0, 0, 8, 10))
    torch.testing.assert_close(whole, image)  # the whole image is a fixed point
    # a 2 x 2 box doubled in both sides (no antialiasing when enlarging): the corners keep the box's corners
    enlarged = resized_crop(torch.arange(16.0).view(1, 4, 4), (1, 1, 2, 2))
    assert enlarged.shape == (1, 4, 4)
    assert enlarged[0, 0, 0] == 5.0 and enlarged[0, -1, -1] == 10.0
    torch.testing.assert_close(enlarged[0, 0], torch.tensor([5.0, 5.25, 5.75, 6.0]))


def test_mdpo_crop_is_reproducible_per_seed_and_differs_between_seeds():
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(mdpo_crop(image, 1), mdpo_crop(image, 1), rtol=0, atol=0)
    assert not torch.equal(mdpo_crop(image, 1), mdpo_crop(image, 2))
    assert mdpo_crop(image, 1).shape == image.shape


def test_gaussian_images_have_clip_channel_statistics():
    image = gaussian_image((3, 64, 64), seed=7)
    means, stds = image.flatten(1).mean(-1), image.flatten(1).std(-1)
    torch.testing.assert_close(means, torch.tensor(CLIP_MEAN), atol=0.02, rtol=0)
    torch.testing.assert_close(stds, torch.tensor(CLIP_STD), atol=0.02, rtol=0)


def test_grid_patches_round_trip_and_lay_out_pixels_as_the_processor_does():
    channels, frames, patch, merge, grid_h, grid_w = 3, 2, 2, 2, 4, 6
    image = torch.randn(channels * frames, grid_h * patch, grid_w * patch)
    patches = patchify_grid(image, merge, patch)
    assert patches.shape == (grid_h * grid_w, channels * frames * patch * patch)
    torch.testing.assert_close(unpatchify_grid(patches, grid_h, grid_w, merge, patch), image, rtol=0, atol=0)
    # the processor's row order: merge blocks row by row, patches inside a block row by row; features (C, T, P, P)
    row = (1 * (grid_w // merge) + 2) * merge * merge + 1 * merge + 0  # block (1, 2), patch (1, 0) inside it
    top, left = (1 * merge + 1) * patch, (2 * merge + 0) * patch
    expected = image[:, top : top + patch, left : left + patch].reshape(-1)
    torch.testing.assert_close(patches[row], expected, rtol=0, atol=0)
