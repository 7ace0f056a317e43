"""`ue-dpo perceivability`: the linear probe of a model's image features that tells which faint shape a held-out
image of a blind-spot world holds, and the noun the model picks when made to name it, on the session's random
tiny Qwen2-VL.

Black faint shapes as large as the large ones are told apart above the blind guess even by a random vision tower;
almost-white ones (grey 254) are not, and the probe then scores what the large shapes alone give away.
"""

import json

import pytest
import torch

from ue_dpo.cli import main
from ue_dpo.evaluation.model import UeDpoHF
from ue_dpo.evaluation.perceivability import faint_images, faint_noun_scores
from ue_dpo.evaluation.shapes_caption import shapes_doc_to_visual
from ue_dpo.statistics import wilson_interval
from ue_dpo.synthetic.blind_spots import write_blind_spot_eval_set
from ue_dpo.synthetic.shapes import CAPTION_PROMPT, write_caption_eval_set
from ue_dpo.synthetic.vocabulary import SHAPES

EVAL_IMAGES = 64  # about 48 with a faint shape: at least 5 of each shape for the 5 folds


def _perceivability(capsys, model_dir, eval_dir, out) -> dict:
    main(["perceivability", "--model", str(model_dir), "--eval-dir", str(eval_dir), "--out", str(out)])
    written = out.read_text()
    # the JSON is printed last (libraries may log a line to stdout as they load)
    assert capsys.readouterr().out.endswith(written)
    return json.loads(written)


def test_the_probe_sees_black_faint_shapes_and_not_almost_white_ones(tiny_qwen2_vl_dir, tmp_path, capsys):
    probes, floors = {}, {}
    for grey in (0, 254):
        manifest = write_blind_spot_eval_set(
            tmp_path / f"grey{grey}", n_images=EVAL_IMAGES, faint_grey=grey, faint_side=1.0
        )
        measured = _perceivability(capsys, tiny_qwen2_vl_dir, tmp_path / f"grey{grey}", tmp_path / f"grey{grey}.json")
        assert measured["machine"]["cpu"]["usable_cores"] >= 1
        probe = measured["probe"]
        faint = [entry["faint"][0] for entry in manifest if entry["faint"]]
        assert measured["n"] == len(faint) and probe["accuracy"] == pytest.approx(probe["correct"] / len(faint) * 100)
        assert measured["chance"] == pytest.approx(max(map(faint.count, set(faint))) / len(faint) * 100)
        # the faint shape is none of the large ones: a blind guess picks among the 2 or 3 shapes they leave
        left = [4 - (len(entry["shapes"]) - 1) for entry in manifest if entry["faint"]]
        assert measured["blind_guess"] == pytest.approx(sum(1 / count for count in left) / len(left) * 100)
        assert probe["interval"] == pytest.approx(
            [100 * bound for bound in wilson_interval(probe["correct"], len(faint))]
        )
        forced = measured["forced_noun"]
        assert forced["accuracy"] == pytest.approx(forced["correct"] / len(faint) * 100)
        assert forced["interval"] == pytest.approx(
            [100 * bound for bound in wilson_interval(forced["correct"], len(faint))]
        )
        probes[grey], floors[grey] = probe, measured
    assert probes[0]["interval"][0] > floors[0]["blind_guess"] > floors[0]["chance"]
    assert probes[254]["interval"][0] < floors[254]["blind_guess"] < probes[254]["interval"][1]
    assert probes[254]["accuracy"] < probes[0]["accuracy"]


def test_the_forced_noun_scores_are_the_log_likelihoods_of_the_captions(tiny_qwen2_vl_dir, tmp_path):
    write_blind_spot_eval_set(tmp_path, n_images=4)
    docs, _ = faint_images(tmp_path)
    model = UeDpoHF(pretrained=str(tiny_qwen2_vl_dir), device="cpu", dtype="float32")
    doc = docs[0]
    scores = faint_noun_scores(model, doc)
    assert sorted(scores) == sorted(SHAPES)
    images = shapes_doc_to_visual(doc)
    prompt_ids = model.encode_prompt(CAPTION_PROMPT, images)
    for shape, score in scores.items():
        caption = doc["caption"].replace(f"small grey {doc['faint'][0]}", f"small grey {shape}")
        # Qwen2-VL's template closes an answer with <|im_end|> and a newline; transformers' own loss, the mean
        # over the answer's tokens, times their number
        answer_ids = model.tokenizer.encode(caption + "<|im_end|>\n", add_special_tokens=False)
        inputs = model.encoded_inputs([prompt_ids + answer_ids], [images])
        labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
        with torch.inference_mode():
            loss = model.model(**inputs, labels=labels).loss
        assert score == pytest.approx(-float(loss) * len(answer_ids), rel=1e-4)


def test_the_wilson_interval_of_a_share_is_the_published_one():
    # Wilson's 95% interval of 8 successes in 10 (Newcombe 1998, table I: 0.4902-0.9433), and of 0 in 10
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(11, 10)


def test_a_folder_without_faint_shapes_is_refused_with_the_flag_named(tiny_qwen2_vl_dir, tmp_path, capsys):
    write_caption_eval_set(tmp_path / "shapes", n_images=2)
    for folder, message in (
        (tmp_path / "shapes", "lists no faint shapes (`faint`)"),
        (tmp_path / "nowhere", "no shapes_eval.json there"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["perceivability", "--model", str(tiny_qwen2_vl_dir), "--eval-dir", str(folder)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"ue-dpo perceivability: error: --eval-dir {folder}" in error and message in error
