"""`ue_prefix_sharing`: one packed row per pair computes exactly what the unshared rows compute."""

import json
import shutil

import pytest
import torch
from llamafactory.extras.constants import IGNORE_INDEX

from tiny_training_config import tiny_training_config
from ue_dpo.core.shared_prefix import (
    ALONE,
    CHOSEN,
    PROMPT,
    REJECTED,
    PrefixNotShared,
    packed_hidden_gather,
    shared_prefix_layout,
)
from ue_dpo_trainers import built_trainer

PLACEHOLDER = 99
# pair 0: prompt 11 12, chosen 21 22, rejected 31; pair 1: prompt 13, chosen 23-27, rejected 33-35 (0 = padding)
INPUT_IDS = torch.tensor(
    [
        [11, 12, 21, 22, 0, 0],
        [13, 23, 24, 25, 26, 27],
        [11, 12, 31, 0, 0, 0],
        [13, 33, 34, 35, 0, 0],
    ]
)
ATTENTION_MASK = (INPUT_IDS != 0).long()
LABELLED = torch.tensor(
    [
        [0, 0, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
    ],
    dtype=torch.bool,
)


def test_each_pair_packs_prompt_chosen_then_rejected_response():
    layout = shared_prefix_layout(INPUT_IDS, ATTENTION_MASK, LABELLED)
    assert layout.pack(INPUT_IDS, -1).tolist() == [
        [11, 12, 21, 22, 31, -1, -1, -1, -1],
        [13, 23, 24, 25, 26, 27, 33, 34, 35],
    ]
    assert layout.segment.tolist() == [
        [PROMPT, PROMPT, CHOSEN, CHOSEN, REJECTED, ALONE, ALONE, ALONE, ALONE],
        [PROMPT, CHOSEN, CHOSEN, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED],
    ]
    assert layout.filler.sum(-1).tolist() == [4, 0]


def test_packed_tokens_keep_their_unshared_position_ids():
    layout = shared_prefix_layout(INPUT_IDS, ATTENTION_MASK, LABELLED)
    columns = torch.arange(6).expand(4, 6)
    assert layout.pack(columns, 0).tolist() == [[0, 1, 2, 3, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 1, 2, 3]]
    mrope = torch.stack([columns, columns + 10, columns + 20])  # [3, 2B, L] planes stay planes
    assert layout.pack(mrope, 0)[:, 1, 6:].tolist() == [[1, 2, 3], [11, 12, 13], [21, 22, 23]]


def test_rejected_tokens_see_the_prompt_and_themselves_but_not_the_chosen_response():
    attends = shared_prefix_layout(INPUT_IDS, ATTENTION_MASK, LABELLED).attends()
    assert attends.shape == (2, 1, 9, 9)
    pair_0 = attends[0, 0].int().tolist()
    assert pair_0[:5] == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0, 0],  # the rejected token: the prompt and itself
    ]
    assert [row.index(1) for row in pair_0[5:]] == [5, 6, 7, 8] and all(sum(row) == 1 for row in pair_0[5:])
    assert attends[1, 0, 8].int().tolist() == [1, 0, 0, 0, 0, 0, 1, 1, 1]


def test_each_unshared_token_maps_to_its_packed_token_and_rejected_prompts_to_the_chosen_ones():
    layout = shared_prefix_layout(INPUT_IDS, ATTENTION_MASK, LABELLED)
    assert layout.packed_index.tolist() == [
        [0, 1, 2, 3, -1, -1],
        [9, 10, 11, 12, 13, 14],
        [0, 1, 4, -1, -1, -1],
        [9, 15, 16, 17, -1, -1],
    ]


def test_hidden_states_are_read_at_the_kept_packed_columns_the_last_prompt_token_twice():
    layout = shared_prefix_layout(INPUT_IDS, ATTENTION_MASK, LABELLED)
    positions = torch.arange(5)  # logits at p predict token p + 1: every column holds a label in some row
    mask = LABELLED[:, 1:]
    kept, hidden_index = packed_hidden_gather(layout, positions, mask)
    assert kept.tolist() == [0, 1, 2, 3, 4, 6, 7]  # pair 1's last chosen (5) and last rejected (8) predict nothing
    packed_hidden = torch.arange(2 * 9).view(2, 9, 1).float()  # each packed token's hidden state: its flat index
    read = packed_hidden[:, kept].flatten(0, 1)[hidden_index].squeeze(-1)
    expected = layout.packed_index[:, positions].masked_fill(~mask, 0)
    assert torch.equal(read[mask], expected[mask].float())
    assert read[2, 1] == read[0, 1] == 1  # pair 0's last prompt token predicts both responses' first tokens


def test_a_response_that_starts_like_the_other_stays_in_its_own_segment():
    input_ids = torch.tensor([[11, 21, 22, 23], [11, 21, 22, 0]])
    labelled = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    layout = shared_prefix_layout(input_ids, (input_ids != 0).long(), labelled)
    assert layout.segment.tolist() == [[PROMPT, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED]]


def test_placeholders_in_chosen_padding_stay_packed_and_attend_only_to_themselves():
    # LLaMA-Factory's blank stand-in image of a text-only batch: placeholders in the first chosen row's padding
    input_ids = torch.tensor([[11, 21, PLACEHOLDER, PLACEHOLDER], [11, 31, 32, 0]])
    attention_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    labelled = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    layout = shared_prefix_layout(input_ids, attention_mask, labelled, (PLACEHOLDER,))
    assert layout.pack(input_ids, 0).tolist() == [[11, 21, 31, 32, PLACEHOLDER, PLACEHOLDER]]
    assert layout.segment.tolist() == [[PROMPT, CHOSEN, REJECTED, REJECTED, ALONE, ALONE]]
    assert layout.attends()[0, 0, 4:].int().tolist() == [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize(
    "input_ids, labelled, message",
    [
        ([[11, 21], [12, 31]], [[0, 1], [0, 1]], "the chosen and rejected prompts of a pair differ"),
        ([[11, 21], [11, 31]], [[0, 1], [0, 0]], "a rejected row has no labelled token"),
        ([[11, 21], [11, PLACEHOLDER]], [[0, 1], [0, 1]], "a rejected row has an image placeholder outside its prompt"),
    ],
)
def test_pairs_that_cannot_share_are_refused_with_the_reason(input_ids, labelled, message):
    input_ids = torch.tensor(input_ids)
    with pytest.raises(PrefixNotShared, match=message):
        shared_prefix_layout(
            input_ids, torch.ones_like(input_ids), torch.tensor(labelled, dtype=torch.bool), (PLACEHOLDER,)
        )


def test_packed_rows_take_the_chosen_rows_images_and_refuse_rejected_rows_with_other_images():
    from ue_dpo.llamafactory.collator import chosen_row_images
    from ue_dpo.model_families import FAMILY_BY_MODEL_TYPE

    input_ids = torch.tensor([[PLACEHOLDER, 21], [PLACEHOLDER, 22], [PLACEHOLDER, 31], [PLACEHOLDER, 32]])
    patches = torch.arange(4 * 3).view(4, 3).float()  # two images of 2 patches each, grid [1, 1, 2]
    qwen_batch = {
        "input_ids": input_ids,
        "pixel_values": torch.cat([patches, patches]),
        "image_grid_thw": torch.tensor([[1, 1, 2], [1, 2, 1]] * 2),
    }
    chosen = chosen_row_images(qwen_batch, (PLACEHOLDER,), FAMILY_BY_MODEL_TYPE["qwen2_vl"])
    assert torch.equal(chosen["pixel_values"], patches) and chosen["image_grid_thw"].tolist() == [[1, 1, 2], [1, 2, 1]]
    # InternVL's tiles: 2 image placeholders per tile; the first image (1 tile) ends its row, the second (2 tiles)
    # starts the next
    tiles_ids = torch.tensor([[21] * 3 + [PLACEHOLDER] * 2, [PLACEHOLDER] * 4 + [22]])
    tiles_ids = torch.cat([tiles_ids, tiles_ids])
    tiles = torch.arange(3 * 2).view(3, 2, 1, 1).float()
    internvl = FAMILY_BY_MODEL_TYPE["internvl"]
    tiles_batch = {"input_ids": tiles_ids, "pixel_values": torch.cat([tiles, tiles])}
    assert [len(image) for image in internvl.split_images(tiles_batch, (PLACEHOLDER,))] == [1, 2, 1, 2]
    assert torch.equal(chosen_row_images(tiles_batch, (PLACEHOLDER,), internvl)["pixel_values"], tiles)
    # Llama 4's canvas tiles: one placeholder per tile here, tile separators and its `<|image|>` (before the global
    # tile) inside an image's run; 3 tiles (a 1 x 2 canvas and the global tile), then 1, between start and end tokens
    separator, global_tile = 23, 24
    canvas_ids = [20, PLACEHOLDER, separator, PLACEHOLDER, separator, global_tile, PLACEHOLDER, 21]
    canvas_batch = {
        "input_ids": torch.tensor([canvas_ids + [20, global_tile, PLACEHOLDER, 21]] * 2),
        "pixel_values": torch.arange(8).view(8, 1, 1, 1).float(),
    }
    llama4 = FAMILY_BY_MODEL_TYPE["llama4"]
    assert [len(image) for image in llama4.split_images(canvas_batch, (PLACEHOLDER,), (separator, global_tile))] == [
        3,
        1,
        3,
        1,
    ]
    other_rejected_image = torch.stack([patches[0], patches[1], patches[0], patches[2]])
    llava_batch = {"input_ids": input_ids, "pixel_values": other_rejected_image}
    with pytest.raises(PrefixNotShared, match="the rejected rows' images are not those of their pairs' chosen rows"):
        chosen_row_images(llava_batch, (PLACEHOLDER,), FAMILY_BY_MODEL_TYPE["llava"])


# --- the packed forward on tiny models, float32 on CPU -----------------------------------------------------------

LONG_REPEATS = 30  # a response this many captions long is cut by CUTOFF_LEN
CUTOFF_LEN = 120
BATCHES = {  # pairs (dataset rows) collated together
    "different-lengths-and-shared-start": [0, 1],
    "with-and-without-image": [2, 5],
    "text-only": [2, 3],
    "cut-by-cutoff-len": [4, 6],
}


def edited_records(records: list[dict]) -> list[dict]:
    caption = records[0]["chosen"]["content"]
    records[0]["chosen"]["content"] = " ".join([caption] * 4)
    records[0]["rejected"]["content"] = "No."
    records[1]["rejected"]["content"] = records[1]["chosen"]["content"] + " And a red star."
    for row in (2, 3):
        records[row]["messages"][0]["content"] = records[row]["messages"][0]["content"].replace("<image>", "")
        records[row]["images"] = []
    for side in ("chosen", "rejected"):
        records[4][side]["content"] = " ".join([records[4][side]["content"]] * LONG_REPEATS)
    return records


@pytest.fixture(scope="module")
def edited_dataset_dir(shapes_dataset_dir, tmp_path_factory):
    dataset_dir = shutil.copytree(shapes_dataset_dir, tmp_path_factory.mktemp("sharing") / "data")
    path = dataset_dir / "shapes_pref.json"
    path.write_text(json.dumps(edited_records(json.loads(path.read_text()))))
    return dataset_dir


# InternVL: each image cut into tiles (2x2 crops and a thumbnail); the template's default system prompt takes 160
# tokens of the tiny tokenizer, and LLaMA-Factory keeps a prompt whole only while it is under half the cutoff.
# (Not `default_system`: LLaMA-Factory writes it into the template every later run in the process shares.)
TRAINER_OVERRIDES = {"internvl": {"crop_to_patches": True, "cutoff_len": CUTOFF_LEN + 2 * 160}}


@pytest.fixture(scope="module", params=["llava", "qwen2_vl", "qwen2_5_vl", "internvl"])
def trainer(request, edited_dataset_dir, tmp_path_factory):
    return trainer_with_a_trained_adapter(request, request.param, edited_dataset_dir, tmp_path_factory)


def trainer_with_a_trained_adapter(request, arch: str, dataset_dir, tmp_path_factory):
    config = tiny_training_config(
        arch,
        request.getfixturevalue(f"tiny_{arch}_dir"),
        dataset_dir,
        tmp_path_factory.mktemp(arch) / "out",
        **{"cutoff_len": CUTOFF_LEN, **TRAINER_OVERRIDES.get(arch, {})},
        max_samples=8,
    )
    return built_trainer(config)


def collated(trainer, rows: list[int]) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[row] for row in rows]))


# Δ is a difference of logits: it keeps the float32 rounding of what it subtracts however small it is, so its
# tolerance is at least 1e-5 of this
ROUNDING_SCALE = 0.1


def close(shared: torch.Tensor, unshared: torch.Tensor, what: str, smallest_scale: float = 1e-12) -> None:
    """Equal within 1e-5 of the tensor's scale (at least `smallest_scale`)."""
    scale = unshared.abs().max().clamp(min=smallest_scale).item()
    torch.testing.assert_close(shared, unshared, rtol=1e-5, atol=1e-5 * scale, msg=lambda message: f"{what}: {message}")


def step_with_sharing(trainer, batch: dict, sharing: bool) -> dict:
    """token_weighting's per-token values, the loss, metrics and LoRA gradients of one batch."""
    trainer.finetuning_args.ue_prefix_sharing = sharing
    model = trainer.model
    model.zero_grad()
    tokens = trainer.token_weighting(model, batch)
    loss, metrics = trainer.get_batch_loss_metrics(model, batch)
    loss.backward()
    return {
        "tokens": {
            name: values.detach()
            for name, values in {
                "policy_logps": tokens.policy_logps,
                "weights": tokens.weights,
                **tokens.details,
            }.items()
        },
        "mask": tokens.response.mask,
        "loss": loss.detach(),
        "metrics": metrics,
        "grads": {
            name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None
        },
    }


@pytest.fixture
def packed_forwards(monkeypatch):
    """How many forwards the step's forward ran packed."""
    from ue_dpo.llamafactory.step_forward import StepForward

    counts = {"packed": 0, "unshared": 0}
    original = StepForward._forward_inputs

    def counted(self, *args, **kwargs):
        inputs, kept, hidden_index = original(self, *args, **kwargs)
        counts["unshared" if hidden_index is None else "packed"] += 1
        return inputs, kept, hidden_index

    monkeypatch.setattr(StepForward, "_forward_inputs", counted)
    return counts


@pytest.mark.parametrize("batch_name", BATCHES)
@pytest.mark.parametrize("weighting", ["ue", "tpo", "ddpo", "uniform"])
def test_sharing_equals_the_unshared_computation(trainer, batch_name, weighting, packed_forwards, monkeypatch):
    monkeypatch.setattr(trainer.finetuning_args, "ue_weighting", weighting)
    check_sharing_equals_the_unshared_computation(trainer, collated(trainer, BATCHES[batch_name]), packed_forwards)


def check_sharing_equals_the_unshared_computation(trainer, batch: dict, packed_forwards: dict) -> None:
    unshared = step_with_sharing(trainer, batch, sharing=False)
    assert packed_forwards["packed"] == 0
    shared = step_with_sharing(trainer, batch, sharing=True)
    assert packed_forwards["packed"] == packed_forwards["unshared"] > 0

    mask = unshared["mask"]
    assert mask.any(-1).all()
    for name, values in unshared["tokens"].items():
        if values.dtype.is_floating_point:
            close(shared["tokens"][name][mask], values[mask], name, smallest_scale=ROUNDING_SCALE)
        else:
            assert torch.equal(shared["tokens"][name], values), name
    close(shared["loss"], unshared["loss"], "loss")
    assert shared["metrics"].keys() == unshared["metrics"].keys()
    # the rewards are β times differences of sequence log-probs, whose rounding they keep
    rewards_scale = trainer.beta * max(abs(unshared["metrics"][key]) for key in ("logps/chosen", "logps/rejected"))
    for key, value in unshared["metrics"].items():
        close(
            torch.tensor(shared["metrics"][key]),
            torch.tensor(value),
            key,
            smallest_scale=rewards_scale if key.startswith("rewards/") else ROUNDING_SCALE,
        )
    assert shared["grads"].keys() == unshared["grads"].keys() and unshared["grads"]
    for name, grad in unshared["grads"].items():
        close(shared["grads"][name], grad, name)


@pytest.fixture(scope="module", params=["qwen3_vl", "glm4v", "qwen3_vl_moe", "glm4v_moe"])
def reasoning_trainer(request, edited_dataset_dir, tmp_path_factory):
    """Qwen3-VL's and GLM-4.xV's, dense and mixture-of-experts (routed token by token, so a packed row routes each
    token as its unshared row does): their reasoning templates start every response with an empty thought block."""
    return trainer_with_a_trained_adapter(request, request.param, edited_dataset_dir, tmp_path_factory)


@pytest.mark.parametrize("batch_name", ["different-lengths-and-shared-start", "with-and-without-image"])
def test_reasoning_families_share_the_prompt_and_keep_the_thought_block_in_each_response(
    reasoning_trainer, batch_name, packed_forwards
):
    trainer = reasoning_trainer
    tokenizer = trainer.data_collator.tokenizer
    for row in BATCHES[batch_name]:
        for side in ("chosen", "rejected"):
            labels = [token for token in trainer.train_dataset[row][f"{side}_labels"] if token != IGNORE_INDEX]
            assert tokenizer.decode(labels).startswith("<think>\n\n</think>\n\n"), (row, side)
    check_sharing_equals_the_unshared_computation(trainer, collated(trainer, BATCHES[batch_name]), packed_forwards)


@pytest.mark.parametrize("arch", ["qwen3_5", "qwen3_5_moe"])
def test_qwen3_5_computes_unshared_rows_and_says_why_once(
    arch, request, edited_dataset_dir, tmp_path_factory, packed_forwards
):
    trainer = trainer_with_a_trained_adapter(request, arch, edited_dataset_dir, tmp_path_factory)
    assert trainer.finetuning_args.ue_prefix_sharing
    batch = collated(trainer, BATCHES["different-lengths-and-shared-start"])
    for _ in range(2):
        with torch.no_grad():
            trainer.get_batch_loss_metrics(trainer.model, batch)
    assert packed_forwards["packed"] == 0 and packed_forwards["unshared"] > 0
    notes = [note for note in trainer.step_notes.logged if note.startswith("ue_prefix_sharing")]
    assert notes == [
        "ue_prefix_sharing: computing unshared rows, since Qwen3.5's Gated DeltaNet layers are recurrent and take no "
        "attention mask: in a packed row the rejected response would read the chosen one."
    ]


@pytest.fixture(scope="module", params=["llava_next", "mistral3", "pixtral"])
def sized_trainer(request, mixed_sizes_dataset_dir, tmp_path_factory):
    """A trainer of a family whose images come with `image_sizes`, on images of different sizes."""
    return trainer_with_a_trained_adapter(request, request.param, mixed_sizes_dataset_dir, tmp_path_factory)


def test_images_of_different_sizes_share_exactly_with_their_image_sizes(sized_trainer, packed_forwards):
    trainer = sized_trainer
    batch = collated(trainer, [0, 1])  # 56 x 56 and 28 x 56: padded patches (LLaVA-NeXT), padded rows (Pixtral)
    assert batch["image_sizes"][0].tolist() != batch["image_sizes"][1].tolist()
    check_sharing_equals_the_unshared_computation(trainer, batch, packed_forwards)
    assert "ue_prefix_sharing: each pair's prompt and image are computed once per pass." in trainer.step_notes.logged


@pytest.mark.parametrize("sized_trainer", ["mistral3"], indirect=True)
def test_a_sliding_window_shorter_than_the_rows_turns_sharing_off_with_the_reason(sized_trainer, monkeypatch):
    trainer = sized_trainer
    text_config = trainer.model.get_base_model().config.get_text_config()
    assert text_config.sliding_window == 4096  # Mistral's default, longer than any row here: sharing stays on
    batch = collated(trainer, [0, 1])
    row_length = batch["input_ids"].shape[1]
    monkeypatch.setattr(text_config, "sliding_window", row_length - 1)
    monkeypatch.setattr(trainer.finetuning_args, "ue_prefix_sharing", True)
    monkeypatch.setattr(trainer.step_notes, "logged", set())
    with torch.no_grad():
        trainer.get_batch_loss_metrics(trainer.model, batch)
    assert trainer.step_notes.logged >= {
        f"ue_prefix_sharing: computing unshared rows, since the language model attends within a sliding window of "
        f"{row_length - 1} tokens, shorter than the batch's {row_length}-token rows, which a packed row does not keep."
    }


def test_cutoff_len_cut_the_long_responses(trainer):
    row = trainer.train_dataset[4]
    overrides = TRAINER_OVERRIDES.get(trainer.model.get_base_model().config.model_type, {})
    cutoff_len = overrides.get("cutoff_len", CUTOFF_LEN)
    assert len(row["chosen_input_ids"]) <= cutoff_len and len(row["rejected_input_ids"]) <= cutoff_len
    assert row["chosen_labels"][-1] != trainer.data_collator.tokenizer.eos_token_id  # cut, not ended


def assert_each_image_is_encoded_once_per_step_and_pass(trainer) -> None:
    base = trainer.model.get_base_model()
    vision = base.model.visual if hasattr(base.model, "visual") else base.model.vision_tower
    encoded_rows = []
    handle = vision.register_forward_pre_hook(
        lambda module, args, kwargs: encoded_rows.append((args[0] if args else next(iter(kwargs.values()))).shape[0]),
        with_kwargs=True,
    )
    batch = collated(trainer, [0, 1])
    try:
        trainer.get_batch_loss_metrics(trainer.model, batch)
    finally:
        handle.remove()
    chosen_image_rows = batch["pixel_values"].shape[0] // 2
    assert encoded_rows == [chosen_image_rows, chosen_image_rows]  # v' (no gradient), then v for policy and reference


def test_each_image_is_encoded_once_per_step_and_pass(trainer, monkeypatch):
    monkeypatch.setattr(trainer.finetuning_args, "ue_prefix_sharing", True)
    assert_each_image_is_encoded_once_per_step_and_pass(trainer)


def test_reasoning_families_encode_each_image_once_per_step_and_pass(reasoning_trainer, monkeypatch):
    monkeypatch.setattr(reasoning_trainer.finetuning_args, "ue_prefix_sharing", True)
    assert_each_image_is_encoded_once_per_step_and_pass(reasoning_trainer)


def test_the_precomputed_reference_pass_shares_prefixes_exactly(trainer, monkeypatch, tmp_path):
    monkeypatch.setattr(trainer.data_collator, "with_row_digests", True)
    rows = {}
    for sharing in (False, True):
        monkeypatch.setattr(trainer.finetuning_args, "ue_prefix_sharing", sharing)
        monkeypatch.setattr(trainer.finetuning_args, "ue_ref_cache_dir", str(tmp_path / f"sharing-{sharing}"))
        with torch.no_grad():
            rows[sharing] = trainer._load_or_compute_reference_rows(trainer.model)
    assert rows[True].keys() == rows[False].keys() and len(rows[False]) == 16
    for digest, logps in rows[False].items():
        close(rows[True][digest], logps, f"row {digest}")


def test_a_pair_with_different_prompts_is_computed_unshared_and_logged_once(trainer, monkeypatch):
    monkeypatch.setattr(trainer.finetuning_args, "ue_prefix_sharing", True)
    monkeypatch.setattr(trainer.step_notes, "logged", set())
    batch = collated(trainer, [0, 1])
    pairs = batch["input_ids"].shape[0] // 2
    batch["input_ids"][pairs, 0] += 1  # the first rejected row's first prompt token
    for _ in range(2):
        with torch.no_grad():
            trainer.get_batch_loss_metrics(trainer.model, batch)
    unshared = [note for note in trainer.step_notes.logged if note.startswith("ue_prefix_sharing: computing unshared")]
    assert unshared == [
        ("ue_prefix_sharing: computing unshared rows, since the chosen and rejected prompts of a pair differ.")
    ]


@pytest.fixture(scope="module")
def eager_trainer_with_trained_vision(tiny_llava_dir, edited_dataset_dir, tmp_path_factory):
    config = tiny_training_config(
        "llava",
        tiny_llava_dir,
        edited_dataset_dir,
        tmp_path_factory.mktemp("eager") / "out",
        cutoff_len=CUTOFF_LEN,
        max_samples=8,
        flash_attn="disabled",
        freeze_vision_tower=False,
        freeze_multi_modal_projector=False,
    )
    return built_trainer(config, trained_adapter=False)


@pytest.mark.parametrize("weighting", ["ue", "tpo"])
def test_eager_attention_and_a_training_vision_tower_share_exactly(
    eager_trainer_with_trained_vision, weighting, monkeypatch
):
    trainer = eager_trainer_with_trained_vision
    assert trainer.model.get_base_model().config.get_text_config()._attn_implementation == "eager"
    monkeypatch.setattr(trainer.finetuning_args, "ue_weighting", weighting)
    batch = collated(trainer, [0, 1])
    unshared, shared = (step_with_sharing(trainer, batch, sharing) for sharing in (False, True))
    mask = unshared["mask"]
    close(shared["tokens"]["policy_logps"][mask], unshared["tokens"]["policy_logps"][mask], "policy_logps")
    close(shared["loss"], unshared["loss"], "loss")
    assert any("vision_tower" in name for name in unshared["grads"])  # the tower trains
    for name, grad in unshared["grads"].items():
        close(shared["grads"][name], grad, name)
    assert (
        "image features are computed in every pass: these vision modules train or carry an adapter: "
        "vision_tower (see freeze_vision_tower, freeze_multi_modal_projector)."
    ) in trainer.step_notes.logged
