"""The blind-spot world's visibility knob (`synthetic.faint_grey`, `synthetic.faint_side`).

The default world is today's byte for byte (digests recorded from the code before the knob existed), and a
different grey or side changes only the faint shapes' pixels.
"""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ue_dpo.experiment.config import ExperimentConfigError, _parse_synthetic
from ue_dpo.synthetic import tiny_models
from ue_dpo.synthetic.shapes import EVAL_MANIFEST
from ue_dpo.synthetic.world import SyntheticWorld, build_synthetic_world

SMALL_WORLD = {
    "world": "blind_spots",
    "sft_examples": 12,
    "sft_noisy_share": 0.3,
    "preference_pairs": 6,
    "eval_images": 8,
}
# sha256 of every file of SMALL_WORLD's data and held-out set, computed at commit 017513e, before the knob
BEFORE_THE_KNOB = {
    "data/blind_spots_pref.json": "ce42a9cfb9158439c9084fb833d8dc7a4d70cd5071b5f2bdf1910635e03ecad0",
    "data/blind_spots_sft.json": "45f1a59863b3db51c69e8ac35d8fbd70b64aee2c95701f44fe7a957d22d02762",
    "data/dataset_info.json": "ee4c6687809348a6e47be8fde993ed72f7b9d704aa8c17401b3e2a5002a786d4",
    "data/images/blind_spots_pref/00000.png": "b56d567f382afaf601ad698436e422335edeb53cfa069f99a72e8c8d5f8f384b",
    "data/images/blind_spots_pref/00001.png": "ac04a4c3744e48754ce417693a3f5018d67c55226f6fdfd091cedb403cbf1cdf",
    "data/images/blind_spots_pref/00002.png": "4705a3874385ef70440ab914cd0c5cdd407aa904e80bb0ab7dcec92d10f629a6",
    "data/images/blind_spots_pref/00003.png": "f6423f23ae1500d187a010aa8479ebb18b51737e4225a501c6ebbec939bdd930",
    "data/images/blind_spots_pref/00004.png": "f9b495985347a6deda684b5391028984b655d03f5d1b0c5e0deeb583532c7c67",
    "data/images/blind_spots_pref/00005.png": "2c99e64bd27a9560464281c269b75d3c1ce3f44baa3ff22fc492467f162c3ad5",
    "data/images/blind_spots_sft/00000.png": "74e13342e4d780581da53860463dfd27bf3a48901afa2108c8213c25688dee01",
    "data/images/blind_spots_sft/00001.png": "c11eadda094bf36c9642d9cc064ffa21292aaa1402bde97edd8c47925bdd412a",
    "data/images/blind_spots_sft/00002.png": "969969bd798f0632580bedcd1c4bc880cdb497d3645f574329025745216a47de",
    "data/images/blind_spots_sft/00003.png": "9c1d37cafcd1badd61af8501911c37217edda8e3dc0461c9dfcdf229bc359873",
    "data/images/blind_spots_sft/00004.png": "93997f9f344dc7e0f907f74f755b43012226f958c399a821f37b85d0d3ec64cb",
    "data/images/blind_spots_sft/00005.png": "7721ef2aaf23025881d02c07311f34cb2dee028a1adfff1c069b3de9dccc6efd",
    "data/images/blind_spots_sft/00006.png": "b30b95564833aeb02ab5c70bd263abf250a44e205e6d1030001e4680e58511bf",
    "data/images/blind_spots_sft/00007.png": "0b270ca4cf4a0b1a1ad632587dbe4c729a9124ff3e8cc38e959531f5997156d2",
    "data/images/blind_spots_sft/00008.png": "789425fa5b2832de7308bdba3d1d9fc71a2b752e5bc20dafca47ada4d882ee29",
    "data/images/blind_spots_sft/00009.png": "cea5cd63d68165211c58cfe49547772528cceaf3f7236a8659e91f699241dbcb",
    "data/images/blind_spots_sft/00010.png": "093ef141700458ea29a55f3feb37c1e0b4234bb3ea0af970bfd4fa70901d7cbe",
    "data/images/blind_spots_sft/00011.png": "c4a1d789e1de973c386476615c083ee72540f71c5e3ce337b3052b0e6cf7e5b1",
    "eval/images/eval/00000.png": "73fb822bd7275070cda5243c2cc44186d58a636ceed77ca38d88a4a3ab9282e4",
    "eval/images/eval/00001.png": "1df0e808cfea3f1bfaded49e923d7707b590d1fd9920b4719a015abd6b7a0fdb",
    "eval/images/eval/00002.png": "0ecc4995091ff87585f87c17671696350a9ff56db272cdf01e63a8475e3ded73",
    "eval/images/eval/00003.png": "db6c33f619c43ee06964fae17db358a13993849cb6864b1817b58824f67e6b1b",
    "eval/images/eval/00004.png": "4da49a926937118f0214c9e424e894c217b5839d53be6002db14c13b96cb7b76",
    "eval/images/eval/00005.png": "2ea07f0b53bab3fed11b4d4d8507ffd52231924b3fc6698ee8e80b094c2a157c",
    "eval/images/eval/00006.png": "99257d81b0de18dc2d67294a8e327eaacddadc470f535da5a840cf4bc5039921",
    "eval/images/eval/00007.png": "1df755da9e3f362e8fd6204fff26dc67a492d9349608ccf83d195b6f26ad54c6",
    "eval/shapes_eval.json": "0a026bbd1067601215b7fc645f89a08a1e8a9c9dcd840791348986afafab0d20",
}


def _world_files(tmp_path: Path, **knob) -> dict[str, bytes]:
    """The data and held-out files of SMALL_WORLD with `knob`, built as `ue-dpo run` builds them (the tiny model,
    which the knob does not touch, left out)."""
    root = tmp_path / "_".join(f"{key}{value}" for key, value in knob.items())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_models, "build_tiny_model", lambda *args, **kwargs: None)
        build_synthetic_world(SyntheticWorld(**SMALL_WORLD, **knob), root)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_default_world_is_the_one_before_the_knob_byte_for_byte(tmp_path):
    files = _world_files(tmp_path)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in files.items()} == BEFORE_THE_KNOB


def test_another_grey_repaints_the_faint_shapes_and_nothing_else(tmp_path):
    default, black = _world_files(tmp_path), _world_files(tmp_path, faint_grey=0)
    assert default.keys() == black.keys()
    assert all(default[name] == black[name] for name in default if name.endswith(".json"))
    faint_of_eval_image = {
        "eval/" + entry["image"]: bool(entry["faint"]) for entry in json.loads(default[f"eval/{EVAL_MANIFEST}"])
    }
    assert False in faint_of_eval_image.values()
    repainted = set()
    for name in (name for name in default if name.endswith(".png")):
        before, after = _pixels(default[name]), _pixels(black[name])
        changed = (before != after).any(axis=-1)
        # every changed pixel was the faint grey and is now black: the large shapes and the background are untouched
        assert (before[changed] == 222).all() and (after[changed] == 0).all(), name
        if name in faint_of_eval_image:
            assert changed.any() == faint_of_eval_image[name], name
        if changed.any():
            repainted.add(name.rsplit("/", 1)[0])
    # the warm-up, preference and held-out images all take the knob
    assert repainted == {"data/images/blind_spots_sft", "data/images/blind_spots_pref", "eval/images/eval"}


def test_a_larger_side_draws_a_larger_faint_shape_within_its_quadrant(tmp_path):
    default, large = _world_files(tmp_path), _world_files(tmp_path, faint_side=0.8)
    entry = next(entry for entry in json.loads(default[f"eval/{EVAL_MANIFEST}"]) if entry["faint"])
    extents = []
    for files in (default, large):
        grey = (_pixels(files["eval/" + entry["image"]]) == 222).all(axis=-1)
        rows, columns = np.nonzero(grey)
        extents.append((rows.max() - rows.min() + 1, columns.max() - columns.min() + 1))
    # a 56-pixel image's quadrant box is 28 - 2 * 3 = 22 pixels wide: 0.4 of it is 9, 0.8 of it 18
    assert max(extents[0]) == 9 and max(extents[1]) == 18


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"world": "blind_spots", "faint_grey": 255}, "synthetic.faint_grey must be an integer grey level in [0, 254]"),
        ({"world": "blind_spots", "faint_grey": 0.5}, "synthetic.faint_grey must be an integer"),
        ({"world": "blind_spots", "faint_side": 0}, "synthetic.faint_side must be a share in (0, 1]"),
        ({"world": "blind_spots", "faint_side": 1.5}, "synthetic.faint_side must be a share in (0, 1]"),
        ({"world": "shapes", "faint_grey": 96}, "synthetic.faint_grey: only `world: blind_spots` draws faint shapes"),
        ({"faint_side": 0.4}, "synthetic.faint_side: only `world: blind_spots` draws faint shapes"),
    ],
)
def test_the_experiment_file_refuses_a_bad_knob_naming_the_key(raw, message):
    with pytest.raises(ExperimentConfigError) as error:
        _parse_synthetic(raw)
    assert message in str(error.value)


def test_the_experiment_file_reads_the_knob():
    world = _parse_synthetic({"world": "blind_spots", "faint_grey": 0, "faint_side": 1})
    assert (world.faint_grey, world.faint_side) == (0, 1)
