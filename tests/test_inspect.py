"""`ue-dpo inspect`: every response token of N pairs with its UE-DPO category, u, Δ and λ, as HTML and PNG."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llamafactory_runs import offline_env
from ue_dpo.cli import main
from ue_dpo.core.weights import TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR, UNSELECTED
from ue_dpo.inspection import (
    CATEGORY_COLOURS,
    InspectedPair,
    InspectedToken,
    InspectError,
    model_keys,
    parse_word_groups,
    summary_table,
    word_group_summary,
)

N_PAIRS, ALPHA, TAU = 3, 0.3, 0.4  # the inspector's defaults for α and τ
UE_DPO = Path(sys.executable).with_name("ue-dpo")


class ResponseSpans(HTMLParser):
    """`{pair index: {"chosen": [span attributes + text], "rejected": [...]}}` from the page's pair sections."""

    def __init__(self):
        super().__init__()
        self.pairs, self._pair, self._side, self._span = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._pair = int(attrs["id"].removeprefix("pair-"))
            self.pairs[self._pair] = {"chosen": [], "rejected": []}
        elif tag == "div" and self._pair is not None:
            self._side = attrs["class"].split()[1]
        elif tag == "span" and self._side is not None:
            self._span = {**attrs, "text": ""}
            self.pairs[self._pair][self._side].append(self._span)

    def handle_endtag(self, tag):
        if tag == "span":
            self._span = None
        elif tag == "div":
            self._side = None

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data


def random_lora_adapter(model_dir, out):
    """A LoRA adapter on a tiny model with random (non-zero) B matrices, so that it changes every logit."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_qwen2_vl_dir, tmp_path_factory):
    return random_lora_adapter(tiny_qwen2_vl_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def qwen3_vl_lora_dir(tiny_qwen3_vl_dir, tmp_path_factory):
    """The inspected model: Qwen3-VL (deepstack features, a reasoning template's thought block in each response)."""
    return random_lora_adapter(tiny_qwen3_vl_dir, tmp_path_factory.mktemp("qwen3_vl_lora"))


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def reference_token_values(inputs: dict, labels, model) -> list[dict]:
    """u, Δ, λ and category per response token of each row, from full-vocabulary logits of plain forwards."""
    import torch

    from ue_dpo.llamafactory.collator import HAS_IMAGE, NOISED_PIXEL_VALUES, ROW_DIGEST

    model_inputs = {
        key: value for key, value in inputs.items() if key not in (NOISED_PIXEL_VALUES, HAS_IMAGE, ROW_DIGEST, "labels")
    }
    with torch.no_grad():
        clean = model(**model_inputs).logits.double()
        noised = model(**{**model_inputs, "pixel_values": inputs[NOISED_PIXEL_VALUES]}).logits.double()
    rows, pairs = [], labels.shape[0] // 2
    for row in range(labels.shape[0]):
        preferred = row < pairs
        positions = (labels[row, 1:] != -100).nonzero().squeeze(-1)
        targets = labels[row, 1:][positions]
        clean_logits, noised_logits = clean[row, positions], noised[row, positions]
        guess = noised_logits.argmax(-1)
        target_logit = clean_logits.gather(-1, targets[:, None])[:, 0]
        u = (clean_logits.gather(-1, guess[:, None])[:, 0] - target_logit).numpy()
        delta = (target_logit - noised_logits.gather(-1, targets[:, None])[:, 0]).numpy()
        selected = delta < np.quantile(delta, TAU) if preferred else delta >= np.quantile(delta, 1 - TAU)
        weights = np.ones_like(u)
        if selected.sum() >= 2:
            standardized = (u - u[selected].mean()) / (u[selected].std(ddof=1) + 1e-6)
            sign = 1.0 if preferred else -1.0
            weights = np.where(selected, 1.0 + sign * ALPHA * sigmoid(standardized), 1.0)
        category = np.where(selected, np.where(u > 0, 1, 2) if preferred else 3, 0)
        rows.append({"token_id": targets.tolist(), "u": u, "delta": delta, "lambda": weights, "category": category})
    return rows


@pytest.fixture(scope="module")
def inspected(qwen3_vl_lora_dir, tiny_qwen3_vl_dir, shapes_dataset_dir, tmp_path_factory):
    """`ue-dpo inspect` on the LoRA dir and the preference file, and the same pairs' values computed here."""
    out = tmp_path_factory.mktemp("inspect") / "inspect"
    command = [
        str(UE_DPO),
        "inspect",
        "--model",
        str(qwen3_vl_lora_dir),
        "--data",
        str(shapes_dataset_dir / "shapes_pref.json"),
        "--n",
        str(N_PAIRS),
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Meanwhile: the same first N pairs, tokenized and collated as training does (LLaMA-Factory loaders, the
    # stage's collator with its v'), scored by the base model + adapter loaded with transformers and peft.
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from ue_dpo.inspection import build_trainer, data_keys, parse_ue_settings

    trainer = build_trainer(
        model_keys(str(qwen3_vl_lora_dir), None),
        data_keys("shapes_pref", str(shapes_dataset_dir), out.parent / "unused"),
        parse_ue_settings([]),
        n=N_PAIRS,
        cutoff_len=2048,
        out_dir=out.parent / "trainer",
    )
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir), qwen3_vl_lora_dir)
    model.eval()
    expected = {}
    for start in range(0, N_PAIRS, 2):
        features = [trainer.train_dataset[index] for index in range(start, min(start + 2, N_PAIRS))]
        inputs = trainer.data_collator(features)
        rows = reference_token_values(inputs, inputs["labels"], model)
        for offset in range(len(features)):
            expected[start + offset] = {"chosen": rows[offset], "rejected": rows[len(features) + offset]}

    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-6000:]
    return out, stdout, expected, trainer.processing_class


def test_the_page_has_one_span_per_response_token_with_the_training_computations_values(inspected):
    out, _, expected, tokenizer = inspected
    page = ResponseSpans()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert sorted(page.pairs) == list(range(N_PAIRS))
    categories_seen = set()
    for pair, sides in expected.items():
        for side, values in sides.items():
            spans = page.pairs[pair][side]
            assert [int(span["data-token-id"]) for span in spans] == values["token_id"], (pair, side)
            assert [span["text"] for span in spans] == [tokenizer.decode([token]) for token in values["token_id"]]
            for key in ("u", "delta", "lambda"):
                shown = np.array([float(span[f"data-{key}"]) for span in spans])
                np.testing.assert_allclose(shown, values[key], rtol=0, atol=2e-5, err_msg=f"{pair} {side} {key}")
            assert [int(span["data-category"]) for span in spans] == values["category"].tolist(), (pair, side)
            assert all(span["class"] == f"tok c{span['data-category']}" for span in spans)
            categories_seen |= set(values["category"].tolist())
    assert {0, 1, 3} <= categories_seen  # unselected, Type-I blind spots and sensitive rejected tokens occur
    assert any(not np.allclose(side["lambda"], 1.0) for sides in expected.values() for side in sides.values())


def test_the_summary_counts_add_up_to_the_pages_tokens(inspected):
    out, stdout, expected, _ = inspected
    summary = json.loads((out / "summary.json").read_text())
    tokens = sum(len(side["token_id"]) for sides in expected.values() for side in sides.values())
    assert (summary["pairs"], summary["response_tokens"]) == (N_PAIRS, tokens)
    for code, (name, row) in enumerate(summary["categories"].items()):
        for side in ("chosen", "rejected"):
            assert row[side] == sum(int((sides[side]["category"] == code).sum()) for sides in expected.values()), name
        assert row["share"] == pytest.approx((row["chosen"] + row["rejected"]) / tokens)
    assert sum(row["chosen"] + row["rejected"] for row in summary["categories"].values()) == tokens
    assert f"{N_PAIRS} pairs, {tokens} response tokens" in stdout
    saved = json.loads((out / "tokens.json").read_text())
    assert [len(pair["chosen"]) + len(pair["rejected"]) for pair in saved] == [
        len(sides["chosen"]["token_id"]) + len(sides["rejected"]["token_id"]) for sides in expected.values()
    ]


def test_each_pair_has_a_png_drawn_in_its_categories_colours(inspected):
    out, _, expected, _ = inspected
    assert sorted(path.name for path in out.glob("*.png")) == [f"pair_{index:03d}.png" for index in range(N_PAIRS)]
    for index, sides in expected.items():
        with Image.open(out / f"pair_{index:03d}.png") as image:
            assert image.format == "PNG" and image.width == 960
            colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 16)}
        used = set(sides["chosen"]["category"].tolist()) | set(sides["rejected"]["category"].tolist())
        for code in used:
            hex_colour = CATEGORY_COLOURS[code]
            assert tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)) in colours, (index, code)


def test_model_dirs_are_read_as_full_models_or_lora_adapters(tiny_qwen2_vl_dir, lora_dir):
    assert model_keys(str(tiny_qwen2_vl_dir), None) == {
        "model_name_or_path": str(tiny_qwen2_vl_dir),
        "finetuning_type": "full",
        "template": "qwen2_vl",
    }
    assert model_keys(str(lora_dir), None) == {
        "model_name_or_path": str(tiny_qwen2_vl_dir),
        "adapter_name_or_path": str(lora_dir),
        "finetuning_type": "lora",
        "template": "qwen2_vl",
    }


@pytest.fixture
def moved_base_adapter_dir(tmp_path):
    """A LoRA adapter folder whose adapter_config.json names a base model that is no longer there."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone")})
    )
    return adapter


def test_a_moved_base_model_is_given_with_base_model(moved_base_adapter_dir, tiny_qwen2_vl_dir):
    assert model_keys(str(moved_base_adapter_dir), None, base_model=str(tiny_qwen2_vl_dir)) == {
        "model_name_or_path": str(tiny_qwen2_vl_dir),
        "adapter_name_or_path": str(moved_base_adapter_dir),
        "finetuning_type": "lora",
        "template": "qwen2_vl",
    }


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--model", "{missing}"],
            ("--model {missing}: no such directory; give a model directory or a LoRA adapter directory."),
        ),
        (["--model", "{empty}"], "--model {empty}: holds neither config.json (a model) nor adapter_config.json"),
        (
            ["--data", "no_such_data"],
            ("--data no_such_data: no such dataset in {data}/dataset_info.json; it lists: shapes_pref, shapes_sft."),
        ),
        (
            ["--data", "shapes_pref", "--dataset-dir", "{empty}"],
            ("--data shapes_pref: not a file, and {empty}/dataset_info.json does not exist"),
        ),
        (["--ue", "tau=0.3"], "--ue tau=0.3: use ue_KEY=VALUE with a UE-DPO key"),
        (
            ["--ue", "ue_alpha=[0.3"],
            (
                "--ue ue_alpha=[0.3: the value is not valid YAML (while parsing a flow sequence (line 1, column 1): "
                "expected ',' or ']', but got '<stream end>' (line 1, column 5))."
            ),
        ),
        (["--ue", "ue_alpha=high"], "--ue ue_alpha: must be a number in (0, 1), got 'high'."),
        (
            ["--model", "{adapter}"],
            (
                "--model {adapter}: the base model {tmp}/gone named in {adapter}/adapter_config.json "
                "(base_model_name_or_path) does not exist; pass --base-model PATH where it is now."
            ),
        ),
        (["--model", "{adapter}", "--base-model", "{missing}"], "--base-model {missing}: no such directory"),
        (
            ["--base-model", "{tmp}"],
            "--base-model {tmp} was given, but --model {model} is not a LoRA adapter directory",
        ),
        (["--word-group", "faint"], "--word-group faint: use NAME=REGEX"),
        (
            ["--word-group", "faint=small (grey"],
            "--word-group faint=small (grey: 'small (grey' is not a Python regular",
        ),
    ],
    ids=[
        "missing model",
        "not a model",
        "unknown dataset",
        "no dataset_info.json",
        "not a ue key",
        "ue value not YAML",
        "ue_alpha not a number",
        "base model gone",
        "missing --base-model",
        "--base-model, no LoRA",
        "word group without =",
        "word group not a regex",
    ],
)
def test_bad_model_or_data_are_refused_naming_the_argument(
    arguments, message, tiny_qwen2_vl_dir, shapes_dataset_dir, moved_base_adapter_dir, tmp_path, capsys
):
    places = {
        "missing": tmp_path / "missing",
        "empty": tmp_path,
        "data": shapes_dataset_dir,
        "tmp": tmp_path,
        "adapter": moved_base_adapter_dir,
        "model": tiny_qwen2_vl_dir,
    }
    given = {"--model": str(tiny_qwen2_vl_dir), "--data": "shapes_pref", "--dataset-dir": str(shapes_dataset_dir)}
    arguments = [argument.format(**places) for argument in arguments]
    for flag, value in given.items():
        if flag not in arguments:
            arguments += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", *arguments, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("ue-dpo inspect: error: ") and error.count("\n") == 1
    assert message.format(**places) in error


def test_a_ue_key_out_of_range_is_refused_before_the_model_loads(
    tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "inspect",
                "--model",
                str(tiny_qwen2_vl_dir),
                "--data",
                "shapes_pref",
                "--dataset-dir",
                str(shapes_dataset_dir),
                "--ue",
                "ue_tau=0.9",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err  # the stage's own message for the key (tests/test_stage_arguments.py), alone
    assert error.startswith("ue-dpo inspect: error: `ue_tau: 0.9`") and error.count("\n") == 1
    assert error.endswith("(set by --ue, --template or --cutoff-len)\n")


def _tokens(*spec):
    """InspectedTokens from (text, category, λ) triples."""
    return [InspectedToken(text, 0, 0.0, 0.0, weight, category) for text, category, weight in spec]


def test_word_groups_count_chosen_tokens_inside_and_outside_the_matches():
    type_i, type_ii = TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR
    pairs = [
        InspectedPair(
            0,
            "",
            None,
            chosen=_tokens(
                ("There", UNSELECTED, 1.0),
                (" is", UNSELECTED, 1.0),
                (" a", type_ii, 1.1),
                (" red", UNSELECTED, 1.0),
                (" circle", UNSELECTED, 1.0),
                (" and", type_i, 1.2),
                (" a", UNSELECTED, 1.0),
                (" small", type_i, 1.25),
                (" gr", type_i, 1.1),
                ("ey", UNSELECTED, 1.0),
                (" star", type_i, 1.2),
                (".", UNSELECTED, 1.0),
            ),
            rejected=_tokens((" small", type_i, 1.3)),
        ),  # rejected tokens never count
        InspectedPair(
            1,
            "",
            None,
            chosen=_tokens(
                ("There", type_ii, 1.05),
                (" is", UNSELECTED, 1.0),
                (" a", UNSELECTED, 1.0),
                (" small grey", type_ii, 1.1),
                (" square", UNSELECTED, 1.0),
                (".", type_i, 1.2),
            ),
            rejected=[],
        ),
    ]
    summary = word_group_summary(pairs, parse_word_groups([r"faint=small grey \w+"]))["faint"]
    # inside: " small", " gr", "ey", " star" (pair 0), " small grey", " square" (pair 1); " a" before them is outside
    assert (summary["tokens_inside"], summary["type_i_inside"], summary["lambda_above_1_inside"]) == (6, 3, 4)
    # outside: 8 + 4 tokens; Type-I " and" and "."; λ > 1: " a", " and", "There", "."
    assert (summary["tokens_outside"], summary["type_i_outside"], summary["lambda_above_1_outside"]) == (12, 2, 4)
    assert summary["type_i_rate_inside"] == pytest.approx(3 / 6)
    assert summary["type_i_rate_outside"] == pytest.approx(2 / 12)
    assert summary["type_i_rate_ratio"] == pytest.approx(3.0)
    table = summary_table({"pairs": 2, "response_tokens": 19, "categories": {}, "word_groups": {"faint": summary}})
    assert "Type-I rate ratio inside / outside: 3.0000" in table


def test_a_word_group_without_type_i_outside_has_no_ratio():
    pairs = [
        InspectedPair(0, "", None, chosen=_tokens(("a", TYPE_I_BLIND_SPOT, 1.2), ("b", UNSELECTED, 1.0)), rejected=[])
    ]
    summary = word_group_summary(pairs, parse_word_groups(["first=a", "none=z"]))
    assert summary["first"]["type_i_rate_inside"] == 1.0 and summary["first"]["type_i_rate_ratio"] is None
    assert summary["none"]["tokens_inside"] == 0 and summary["none"]["type_i_rate_inside"] is None
    with pytest.raises(InspectError, match="the group 'first' is given twice"):
        parse_word_groups(["first=a", "first=b"])


@pytest.mark.parametrize(
    "fixture",
    [
        "tiny_llava_dir",
        "tiny_qwen2_5_vl_dir",
        "tiny_glm4v_dir",
        "tiny_llava_next_dir",
        "tiny_mistral3_dir",
        "tiny_pixtral_dir",
        "tiny_internvl_dir",
        "tiny_gemma3_dir",
        "tiny_qwen3_5_dir",
        "tiny_qwen3_vl_moe_dir",
        "tiny_qwen3_5_moe_dir",
        "tiny_glm4v_moe_dir",
        "tiny_llama4_dir",
    ],
)
def test_every_family_is_inspected_with_the_values_of_plain_forwards(request, fixture, shapes_dataset_dir, tmp_path):
    """The inspector's u, Δ, λ and categories on every trained family (Qwen3-VL: the page test above) equal those of
    plain full-vocabulary forwards: anyres patches, padded images, tiles, Gemma 3's token types, unshared rows."""
    from transformers import AutoModelForImageTextToText

    from ue_dpo.inspection import build_trainer, data_keys, inspect_pairs, parse_ue_settings

    model_dir = request.getfixturevalue(fixture)
    trainer = build_trainer(
        model_keys(str(model_dir), None),
        data_keys("shapes_pref", str(shapes_dataset_dir), tmp_path / "unused"),
        parse_ue_settings([]),
        n=2,
        cutoff_len=2048,
        out_dir=tmp_path / "trainer",
    )
    features = [trainer.train_dataset[index] for index in range(2)]
    inputs = trainer.data_collator(features)
    expected = reference_token_values(inputs, inputs["labels"], AutoModelForImageTextToText.from_pretrained(model_dir))
    pairs = inspect_pairs(trainer, batch_size=2)
    for pair in pairs:
        for side, row in (("chosen", pair.index), ("rejected", len(pairs) + pair.index)):
            tokens, values = getattr(pair, side), expected[row]
            assert [token.token_id for token in tokens] == values["token_id"], (fixture, pair.index, side)
            for key, field in (("u", "uncertainty"), ("delta", "delta"), ("lambda", "weight")):
                shown = np.array([getattr(token, field) for token in tokens], dtype=float)
                np.testing.assert_allclose(shown, values[key], rtol=0, atol=2e-5, err_msg=f"{pair.index} {side} {key}")
            assert [token.category for token in tokens] == values["category"].tolist(), (pair.index, side)
