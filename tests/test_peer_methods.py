"""The peer methods on a tiny Qwen2-VL through the stage's trainer (packed prompts, image-feature cache, chunked
projections), against the naive computation: unshared rows, full `[N, L, V]` logits, each formula written out per
pair; loss and gradients. And their second images and key checks."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from image_column_data import mask_box, rejected_image_row, second_image_row, write_column_dataset
from llamafactory_runs import train_in_one_process
from tiny_training_config import tiny_training_config
from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.config import UEDPOArguments
from ue_dpo.core.second_images import CLIP_MEAN, unpatchify_grid
from ue_dpo.llamafactory.collator import HAS_IMAGE, NOISED_PIXEL_VALUES, ROW_DIGEST, SECOND_PIXEL_VALUES
from ue_dpo_trainers import built_trainer

PEER_KEYS = {
    "mdpo": {},
    "mfpo": {"ue_noise_step": 500, "ue_noise_schedule": "sigmoid", "ue_noise_space": "pixel_values", "ue_seed": None},
    "chip": {
        "chip_alpha": 0.5,
        "ue_noise_step": 500,
        "ue_noise_schedule": "sigmoid",
        "ue_noise_space": "pixel_values",
        "ue_seed": None,
    },
    "vdpo": {"vdpo_gamma": 2.0, "vdpo_blank_images": 0, "vdpo_guidance": "policy"},
}


@pytest.fixture(scope="module")
def column_data_dir(shapes_dataset_dir, tmp_path_factory):
    """`columns`: the shapes pairs with the four image columns (tests/image_column_data.py)."""
    data_dir = tmp_path_factory.mktemp("column_data")
    write_column_dataset(data_dir, shapes_dataset_dir, name="columns")
    return data_dir


@pytest.fixture(scope="module")
def row_columns(shapes_dataset_dir, column_data_dir):
    """The prepared column values of shapes pair `row`, as `image_columns` carries them to the collator."""

    def image(row: int) -> str:
        return str(shapes_dataset_dir / f"images/shapes_pref/{row:05d}.png")

    def columns(row: int) -> dict[str, list[str]]:
        return {
            "ue_second_image": [image(second_image_row(row, 8))],
            "ue_chosen_image": [image(row)],
            "ue_rejected_image": [image(rejected_image_row(row, 8))],
            "ue_region_mask": [str(column_data_dir / f"masks/{row}.png")],
        }

    return columns


@pytest.fixture(scope="module")
def trainer(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path_factory):
    config = tiny_training_config(
        "qwen2_vl",
        tiny_qwen2_vl_dir,
        shapes_dataset_dir,
        tmp_path_factory.mktemp("peers") / "out",
        max_samples=4,
        ue_weighting="mdpo",
        pref_beta=0.5,
    )
    return built_trainer(config)


def use_method(trainer, monkeypatch, name: str, columns=None, **keys) -> dict:
    """Switch the trainer to method `name` with `keys` and return a batch of two pairs collated for it, the pairs'
    rows given the image columns `columns(row)` where the method reads them."""
    args = trainer.finetuning_args
    monkeypatch.setattr(args, "ue_weighting", name)
    for key, value in {**PEER_KEYS.get(name, {}), **keys}.items():
        monkeypatch.setattr(args, key, value)
    method = args.method
    collator = dataclasses.replace(
        trainer.data_collator,
        with_noised_image=method.reads_noised_image,
        second_images=method.second_images,
        response_images=method.reads_response_images,
        noise_space=args.ue_noise_space,
    )
    features = [trainer.train_dataset[row] for row in range(2)]
    if method.data_columns:
        features = [{**feature, **columns(row)} for row, feature in enumerate(features)]
        assert [feature["images"] for feature in features] == [columns(row)["ue_chosen_image"] for row in range(2)]
    return trainer._prepare_inputs(collator(features))


def step_loss_and_grads(trainer, batch) -> tuple[float, dict, dict[str, torch.Tensor]]:
    trainer.model.zero_grad()
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    loss.backward()
    return loss.item(), metrics, lora_grads(trainer)


def lora_grads(trainer) -> dict[str, torch.Tensor]:
    return {
        name: parameter.grad.clone()
        for name, parameter in trainer.model.named_parameters()
        if parameter.grad is not None
    }


class Naive:
    """Per-row summed log-probs from the model's full logits on unshared rows."""

    def __init__(self, trainer, batch):
        self.model = trainer.model
        self.inputs = {
            key: value for key, value in batch.items() if key not in (HAS_IMAGE, NOISED_PIXEL_VALUES, ROW_DIGEST)
        }
        self.inputs = {key: value for key, value in self.inputs.items() if not key.startswith(SECOND_PIXEL_VALUES)}
        self.labels = self.inputs.pop("labels")[:, 1:]
        self.mask = self.labels != -100
        self.batch = batch
        self.pairs = self.labels.shape[0] // 2

    def pixel_values(self, image: str) -> torch.Tensor:
        if image == "clean":
            return self.inputs["pixel_values"]
        if image == "noised":
            return self.batch[NOISED_PIXEL_VALUES]
        return self.batch[SECOND_PIXEL_VALUES + image]

    def log_softmax(self, image: str, reference: bool) -> torch.Tensor:
        inputs = {**self.inputs, "pixel_values": self.pixel_values(image)}
        if reference:
            with torch.no_grad(), self.model.disable_adapter():
                logits = self.model(**inputs).logits
        else:
            logits = self.model(**inputs).logits
        return logits[:, :-1].float().log_softmax(-1)

    def token_logps(self, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs.gather(-1, self.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * self.mask

    def sums(self, image: str = "clean", reference: bool = False, span: torch.Tensor | None = None) -> torch.Tensor:
        token = self.token_logps(self.log_softmax(image, reference))
        return (token * (self.mask if span is None else span)).sum(-1)


def ell(z: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(z)


def check_matches_naive(trainer, batch, naive_loss) -> dict:
    loss, metrics, grads = step_loss_and_grads(trainer, batch)
    trainer.model.zero_grad()
    expected = naive_loss()
    expected.backward()
    expected_grads = lora_grads(trainer)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        scale = expected_grads[name].abs().max().item()
        error = (grad - expected_grads[name]).abs().max().item()
        assert error <= 1e-4 * scale, (name, error, scale)
    return metrics


@pytest.mark.parametrize(
    ("name", "keys", "policy_image", "reference_image"),
    [
        ("mdpo", {}, "crop_policy", "crop_reference"),
        ("mfpo", {}, "noised", "noised"),
        ("mdpo", {"mdpo_second_image": "column"}, "supplied", "supplied"),
        ("mfpo", {"mfpo_second_image": "region_mask"}, "region_noised", "region_noised"),
    ],
    ids=["mdpo", "mfpo", "mdpo_column", "mfpo_region_mask"],
)
def test_mdpo_and_mfpo_match_their_three_terms(
    trainer, monkeypatch, row_columns, name, keys, policy_image, reference_image
):
    batch = use_method(trainer, monkeypatch, name, row_columns, **keys)
    beta = trainer.beta

    def naive_loss():
        naive = Naive(trainer, batch)
        pairs = naive.pairs
        s, r = naive.sums(), naive.sums(reference=True)
        s2, r2 = naive.sums(policy_image)[:pairs], naive.sums(reference_image, reference=True)[:pairs]
        sw, sl, rw, rl = s[:pairs], s[pairs:], r[:pairs], r[pairs:]
        text = ell(beta * ((sw - sl) - (rw - rl)))
        image = ell(beta * ((sw - s2) - (rw - r2)))
        anchor = ell(beta * (sw - rw))
        return (text + image + anchor).mean()

    metrics = check_matches_naive(trainer, batch, naive_loss)
    assert {f"{name}/text_loss", f"{name}/image_loss", f"{name}/anchor_loss"} <= metrics.keys()


def test_mdpo_crops_differ_for_policy_and_reference_and_repeat_per_sample(trainer, monkeypatch):
    batch = use_method(trainer, monkeypatch, "mdpo")
    again = use_method(trainer, monkeypatch, "mdpo")
    policy, reference = batch[SECOND_PIXEL_VALUES + "crop_policy"], batch[SECOND_PIXEL_VALUES + "crop_reference"]
    assert policy.shape == reference.shape == batch["pixel_values"].shape
    assert not torch.equal(policy, reference) and not torch.equal(policy, batch["pixel_values"])
    assert torch.equal(policy, again[SECOND_PIXEL_VALUES + "crop_policy"])  # seeded by the sample's content
    # each image's crop, laid out as the image: a resized sub-box, so its values lie within the clean image's range
    processor = trainer.data_collator.processor.image_processor
    grids, offset = batch["image_grid_thw"].tolist(), 0
    for _, grid_h, grid_w in grids:
        rows = slice(offset, offset + grid_h * grid_w)
        offset += grid_h * grid_w
        clean, crop = (
            unpatchify_grid(values[rows], grid_h, grid_w, processor.merge_size, processor.patch_size)
            for values in (batch["pixel_values"], policy)
        )
        assert crop.shape == clean.shape
        assert crop.min() >= clean.min() - 1e-5 and crop.max() <= clean.max() + 1e-5
        torch.testing.assert_close(crop[0::2], crop[1::2], rtol=0, atol=0)  # both temporal copies cropped alike


def processed(trainer, paths: list[str]) -> torch.Tensor:
    """The image processor's own `pixel_values` of image files, independently of LLaMA-Factory's plugin."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    return trainer.data_collator.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("name", ["mdpo", "chip"])
def test_a_second_image_column_is_what_the_pass_on_m_prime_sees(trainer, monkeypatch, row_columns, name):
    batch = use_method(trainer, monkeypatch, name, row_columns, **{f"{name}_second_image": "column"})
    supplied = processed(trainer, [row_columns(row)["ue_second_image"][0] for row in range(2)])
    assert not torch.equal(supplied, batch["pixel_values"][: supplied.shape[0]])
    # chosen rows, then rejected rows: both rows of a pair see the pair's m'
    torch.testing.assert_close(batch[SECOND_PIXEL_VALUES + "supplied"], torch.cat([supplied, supplied]))
    assert not any(key.startswith(SECOND_PIXEL_VALUES + "crop") for key in batch) and NOISED_PIXEL_VALUES not in batch
    method = trainer.finetuning_args.method
    if name == "mdpo":
        assert (method.policy_image, method.reference_image) == ("supplied", "supplied")
    else:
        assert method.second_image == "supplied"


@pytest.mark.parametrize("space", ["pixel_values", "image"])
def test_mfpo_region_mask_noises_inside_the_mask_and_leaves_the_rest_bit_identical(
    trainer, monkeypatch, row_columns, space
):
    masked = use_method(
        trainer, monkeypatch, "mfpo", row_columns, mfpo_second_image="region_mask", ue_noise_space=space
    )
    # v', the global noise, in the same space
    noised = use_method(trainer, monkeypatch, "mfpo", mfpo_second_image="noise", ue_noise_space=space)
    noised = noised[NOISED_PIXEL_VALUES]
    processor = trainer.data_collator.processor.image_processor
    grids, offset = masked["image_grid_thw"].tolist(), 0
    for index, (_, grid_h, grid_w) in enumerate(grids):
        rows = slice(offset, offset + grid_h * grid_w)
        offset += grid_h * grid_w
        clean, noisy, second = (
            unpatchify_grid(values[rows], grid_h, grid_w, processor.merge_size, processor.patch_size)
            for values in (masked["pixel_values"], noised, masked[SECOND_PIXEL_VALUES + "region_noised"])
        )
        assert clean.shape[-2:] == (56, 56)  # the 56 x 56 image is not resized: the mask's pixels are the tensor's
        box = mask_box(index % 2)  # the batch's images: pair 0, pair 1, then the same for the rejected rows
        expected = clean.clone()
        if box is None:  # an all-black mask: global noise, MFPO's fallback where grounding fails
            expected = noisy
        else:
            left, top, right, bottom = box
            expected[:, top:bottom, left:right] = noisy[:, top:bottom, left:right]
            assert not torch.equal(noisy[:, top:bottom, left:right], clean[:, top:bottom, left:right])
        assert torch.equal(second, expected)


def test_chip_matches_one_sigmoid_with_the_full_softmax_kl(trainer, monkeypatch):
    batch = use_method(trainer, monkeypatch, "chip")
    beta, alpha = trainer.beta, 0.5

    def naive_loss():
        naive = Naive(trainer, batch)
        pairs = naive.pairs
        policy_log_p = naive.log_softmax("clean", reference=False)
        reference_log_p = naive.log_softmax("clean", reference=True)
        kl = ((reference_log_p.exp() * (reference_log_p - policy_log_p)).sum(-1) * naive.mask).sum(-1)
        s, r = (naive.token_logps(policy_log_p)).sum(-1), naive.token_logps(reference_log_p).sum(-1)
        s2, r2 = naive.sums("noised")[:pairs], naive.sums("noised", reference=True)[:pairs]
        sw, sl, rw, rl = s[:pairs], s[pairs:], r[:pairs], r[pairs:]
        h = ((sw - sl) - (rw - rl)) + ((sw - rw) - (s2 - r2)) - alpha * (kl[pairs:] - kl[:pairs].detach())
        return ell(beta * h).mean()

    metrics = check_matches_naive(trainer, batch, naive_loss)
    assert metrics["chip/kl_chosen"] > 0 and metrics["chip/kl_rejected"] > 0


@pytest.mark.parametrize(
    "keys",
    [
        {"vdpo_gamma": 2.0},
        {"vdpo_gamma": 1.5, "vdpo_blank_images": 2, "vdpo_guidance": "reference"},
        {"vdpo_gamma": 1.0},
        {"vdpo_gamma": 2.0, "vdpo_response_images": "columns"},
    ],
    ids=["zeros_policy", "gaussian_reference", "gamma_one", "per_response_images"],
)
def test_vdpo_matches_dpo_on_guided_scores(trainer, monkeypatch, row_columns, keys):
    batch = use_method(trainer, monkeypatch, "vdpo", row_columns, **keys)
    if keys.get("vdpo_response_images") == "columns":  # the chosen rows scored on m_w, the rejected rows on m_l
        chosen, rejected = (
            processed(trainer, [row_columns(row)[f"ue_{side}_image"][0] for row in range(2)])
            for side in ("chosen", "rejected")
        )
        torch.testing.assert_close(batch["pixel_values"], torch.cat([chosen, rejected]))
    beta, gamma = trainer.beta, keys["vdpo_gamma"]
    blanks = keys.get("vdpo_blank_images", 0)
    images = ["blank"] if blanks == 0 else [f"blank_{index}" for index in range(blanks)]
    if gamma == 1:
        assert not any(key.startswith(SECOND_PIXEL_VALUES) for key in batch)
    elif blanks == 0:
        assert torch.count_nonzero(batch[SECOND_PIXEL_VALUES + "blank"]) == 0
    else:
        first, second = (batch[SECOND_PIXEL_VALUES + image] for image in images)
        assert not torch.equal(first, second)
        assert first.mean().item() == pytest.approx(sum(CLIP_MEAN) / 3, abs=0.05)

    def naive_loss():
        naive = Naive(trainer, batch)
        pairs = naive.pairs
        span = naive.mask.clone()
        if gamma == 1:  # from the first column where the pair's responses differ
            for pair in range(pairs):
                chosen, rejected = naive.labels[pair], naive.labels[pairs + pair]
                first = next(column for column in range(chosen.shape[0]) if chosen[column] != rejected[column])
                span[pair, :first] = False
                span[pairs + pair, :first] = False
        s, r = naive.sums(span=span), naive.sums(reference=True, span=span)
        guided = s
        if gamma != 1:
            with torch.no_grad():
                reference = keys.get("vdpo_guidance") == "reference"
                u = torch.stack([naive.sums(image, reference=reference, span=span) for image in images]).mean(0)
            guided = gamma * s - (gamma - 1) * u
        h = (guided[:pairs] - r[:pairs]) - (guided[pairs:] - r[pairs:])
        return ell(beta * h).mean()

    check_matches_naive(trainer, batch, naive_loss)


def test_mdpo_with_ue_weights_only_its_text_term(trainer, monkeypatch):
    ue_keys = {"ue_tau": 0.4, "ue_stat_scope": "sequence", "ue_weight_target": "policy", "ue_branches": "both"}
    noise_keys = PEER_KEYS["mfpo"]
    batch = use_method(trainer, monkeypatch, "mdpo_ue", ue_alpha=0.0, **ue_keys, **noise_keys)
    mdpo_batch = {key: value for key, value in batch.items() if key != NOISED_PIXEL_VALUES}
    at_zero = step_loss_and_grads(trainer, batch)
    monkeypatch.setattr(trainer.finetuning_args, "ue_weighting", "mdpo")
    plain = step_loss_and_grads(trainer, mdpo_batch)
    assert at_zero[0] == plain[0]  # α = 0: λ ≡ 1, mDPO to the bit
    batch = use_method(trainer, monkeypatch, "mdpo_ue", ue_alpha=0.3, **ue_keys, **noise_keys)
    weighted = step_loss_and_grads(trainer, batch)[1]
    assert weighted["mdpo_ue/text_loss"] != pytest.approx(plain[1]["mdpo/text_loss"], rel=1e-6)
    for term in ("image_loss", "anchor_loss"):  # the same crops, unweighted
        assert weighted[f"mdpo_ue/{term}"] == pytest.approx(plain[1][f"mdpo/{term}"], rel=1e-6)
    assert 1.0 < weighted["ue/lambda_chosen_mean"] <= 1.3


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"ue_weighting": "vdpo", "vdpo_gamma": 0.0}, "no gradient"),
        ({"ue_weighting": "vdpo", "vdpo_gamma": 1.0, "vdpo_blank_images": 2}, "have no effect"),
        ({"ue_weighting": "vdpo", "vdpo_guidance": "reference", "ue_precompute_ref": True}, "blank image"),
        ({"ue_weighting": "chip", "ue_precompute_ref": True}, "whole distribution"),
        ({"ue_weighting": "mdpo", "ue_precompute_ref": True}, "second image"),
        ({"ue_weighting": "chip", "chip_alpha": -1.0}, "must be >= 0"),
        ({"ue_weighting": "mdpo", "ue_alpha": 0.2}, "`ue_alpha: 0.2` applies to `ue_weighting: ue` or `mdpo_ue`"),
        ({"ue_weighting": "mdpo", "ue_noise_step": 100}, "use `ue_weighting: ue`"),
        (
            {"ue_weighting": "mfpo", "mfpo_second_image": "column", "ue_noise_step": 500},
            "`ue_noise_step: 500` has no effect: with `mfpo_second_image: column` m' is the dataset's `second_image`",
        ),
        ({"ue_weighting": "chip", "chip_second_image": "column", "ue_seed": 3}, "`ue_seed: 3` has no effect"),
        ({"ue_weighting": "mfpo", "mdpo_second_image": "column"}, "`mdpo_second_image` applies to"),
        ({"ue_weighting": "mdpo", "mdpo_second_image": "noise"}, "`mdpo_second_image: noise` is not supported"),
        ({"ue_weighting": "chip", "vdpo_response_images": "columns"}, "`vdpo_response_images` applies to"),
    ],
)
def test_peer_keys_are_refused_with_the_reason(keys, message):
    with pytest.raises(UEDPOUserError, match=message):
        UEDPOArguments(**keys).validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None)


def test_vdpo_with_policy_guidance_accepts_the_reference_cache():
    args = UEDPOArguments(ue_weighting="vdpo", ue_precompute_ref=True)
    args.validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None)  # the reference runs on the clean image only
    assert args.vdpo_guidance == "policy" and args.vdpo_gamma == 2.0


def test_label_smoothing_is_refused_where_the_source_has_none():
    UEDPOArguments(ue_weighting="vdpo").validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None, label_smoothing=0.1)
    with pytest.raises(UEDPOUserError, match="`dpo_label_smoothing: 0.1` cannot be used with `ue_weighting: chip`"):
        UEDPOArguments(ue_weighting="chip").validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None, label_smoothing=0.1)


PEER_TERMS = {
    "mdpo": "mdpo/image_loss",
    "mfpo": "mfpo/image_loss",
    "vdpo": "vdpo/guidance_chosen",
    "chip": "chip/kl_chosen",
}


# the column modes, each trained on one of the two families: (method, arch) -> its keys
COLUMN_RUNS = {
    ("mdpo", "llava"): {"mdpo_second_image": "column"},
    ("chip", "qwen2_vl"): {"chip_second_image": "column"},
    ("mfpo", "llava"): {"mfpo_second_image": "region_mask"},
    ("vdpo", "qwen2_vl"): {"vdpo_response_images": "columns"},
}


@pytest.fixture(scope="module")
def peer_trainings(tiny_llava_dir, tiny_qwen2_vl_dir, shapes_dataset_dir, column_data_dir, tmp_path_factory):
    """Each peer, 2 steps on the tiny LLaVA and the tiny Qwen2-VL, and each column mode (`COLUMN_RUNS`) on the
    `columns` dataset, through LLaMA-Factory's `run_exp` (what `llamafactory-cli train` calls) in one process."""
    root = tmp_path_factory.mktemp("peer_trainings")
    model_dirs = {"llava": tiny_llava_dir, "qwen2_vl": tiny_qwen2_vl_dir}
    column_runs = {
        (name, arch, "columns"): (
            tiny_training_config(
                arch,
                model_dirs[arch],
                column_data_dir,
                root / f"{name}-{arch}-columns",
                dataset="columns",
                ue_weighting=name,
                max_samples=4,
                **keys,
            ),
            root / f"{name}-{arch}-columns-work",
        )
        for (name, arch), keys in COLUMN_RUNS.items()
    }
    runs = {
        (name, arch): (
            tiny_training_config(
                arch, model_dir, shapes_dataset_dir, root / f"{name}-{arch}", ue_weighting=name, max_samples=4
            ),
            root / f"{name}-{arch}-work",
        )
        for arch, model_dir in (("llava", tiny_llava_dir), ("qwen2_vl", tiny_qwen2_vl_dir))
        for name in PEER_TERMS
    }
    return train_in_one_process({**runs, **column_runs}, timeout=1800)


@pytest.mark.e2e
@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("name", list(PEER_TERMS))
def test_peer_trains_two_steps_through_llamafactory(name, arch, peer_trainings):
    steps = [entry for entry in peer_trainings[name, arch] if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert math.isfinite(entry["loss"]) and entry["rewards/accuracies"] >= 0
    assert PEER_TERMS[name] in steps[0]


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "arch"), list(COLUMN_RUNS))
def test_peer_trains_two_steps_on_its_dataset_columns(name, arch, peer_trainings):
    steps = [entry for entry in peer_trainings[name, arch, "columns"] if "loss" in entry]
    assert len(steps) == 2 and all(math.isfinite(entry["loss"]) for entry in steps)
    assert PEER_TERMS[name] in steps[0]


def test_second_images_are_refused_on_a_layout_they_are_not_built_for():
    from ue_dpo.llamafactory.collator import SECOND_IMAGE_BY_PIXEL_LAYOUT, check_second_images
    from ue_dpo.methods.base import SecondImage
    from ue_dpo.model_families import FAMILIES

    unbuilt = [family for family in FAMILIES if family.pixel_layout not in SECOND_IMAGE_BY_PIXEL_LAYOUT]
    assert unbuilt  # LLaVA-NeXT's anyres patches, Pixtral's padded images
    with pytest.raises(UEDPOUserError, match=f"`ue_weighting: mdpo` needs second images .*{unbuilt[0].pixel_layout}"):
        check_second_images(unbuilt[0], {"crop_policy": SecondImage("crop")}, "mdpo")
    check_second_images(unbuilt[0], {}, "mfpo")  # v' alone is built for every layout
    with pytest.raises(
        UEDPOUserError, match=r"`ue_weighting: vdpo` needs second images \(chosen_image, rejected_image\)"
    ):
        check_second_images(unbuilt[0], {}, "vdpo", response_images=True)
