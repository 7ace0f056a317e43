"""How perceivable a blind-spot world's faint shapes are to one model, measured on the model alone (`ue-dpo
perceivability`): the x-axis of a visibility study, computed on the warm-up before any preference method runs.

The linear probe: for each held-out image that holds a faint shape (the manifest's `faint`), the image features
as the language model receives them (the vision tower and projector, the family's `get_image_features`, on the
image as evaluation encodes it), each image's patch features concatenated into one vector, not mean-pooled: a
faint shape is a few patches of one quadrant, and which shape it is lies in which patches differ and how, which a
mean over patches blurs into the large shapes' features. A multinomial logistic regression on standardized
features (scikit-learn, fitted within each fold) predicts which of the 4 shapes is the faint one, by stratified
k-fold cross-validation with a fixed seed: every image is predicted by a probe that never saw it. Reported: the
accuracy over the images, its 95% Wilson interval, the chance level, the share of the commonest faint shape (what
always answering it would score), and the blind guess level, which is the floor to read the accuracy against:
the faint shape is never one of the image's large shapes, which the features show plainly, so a probe blind to the
faint shape still scores a uniform guess among the shapes the large ones leave (1/3 with one large shape, 1/2
with two), the mean of which over the images is the blind guess level.

The forced noun: on the same images, the model's choice of the faint noun when it is made to name one. Each
image's true caption (which ends "... and a small grey <shape>.") is scored with each of the 4 shapes as that
noun, by the log-probability of the whole response given the image (teacher forcing, the prompt as evaluation
encodes it), and the likeliest is the model's choice. It asks the language model, not a probe, whether the
faint shape reaches its decision; greedy captions of a warm-up that rarely names faint shapes cannot (its
captions' faint_noun_accuracy counts the few nouns it names). Reported with the same interval and floors.
"""

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ue_dpo.evaluation.model import UeDpoHF
from ue_dpo.evaluation.shapes_caption import load_shapes_eval_docs, shapes_doc_to_visual
from ue_dpo.model_families import family_of, image_encoder_owner
from ue_dpo.statistics import wilson_interval
from ue_dpo.synthetic.shapes import CAPTION_PROMPT, EVAL_MANIFEST
from ue_dpo.synthetic.vocabulary import FAINT_SHAPE_WORDS, SHAPES

PROBE_FOLDS = 5
PROBE_SEED = 0


class PerceivabilityError(ValueError):
    """Input the probe cannot measure; the message names the folder or model and the fix."""


def faint_images(eval_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The held-out docs whose image holds a faint shape, and that shape, from a blind-spot world's manifest
    (a doc's `shapes` are all its shapes, the faint one included)."""
    if not (Path(eval_dir) / EVAL_MANIFEST).is_file():
        raise PerceivabilityError(
            f"--eval-dir {eval_dir}: no {EVAL_MANIFEST} there; name the held-out folder of a blind-spot world "
            f"(an experiment's <output>/synthetic/eval)"
        )
    docs = load_shapes_eval_docs(Path(eval_dir))
    if any("faint" not in doc for doc in docs):
        raise PerceivabilityError(
            f"--eval-dir {eval_dir}: its {EVAL_MANIFEST} lists no faint shapes (`faint`), so it is not a blind-spot "
            f"world's; name the held-out folder of a `synthetic.world: blind_spots` experiment"
        )
    with_faint = [doc for doc in docs if doc["faint"]]
    for doc in with_faint:
        if len(doc["faint"]) != 1 or not re.search(FAINT_SHAPE_WORDS, doc["caption"]):
            raise PerceivabilityError(
                f"--eval-dir {eval_dir}: image {doc['image']} lists {doc['faint']} as faint with the caption "
                f'{doc["caption"]!r}; a blind-spot world\'s image holds one faint shape, named "small grey <shape>"'
            )
    return with_faint, [doc["faint"][0] for doc in with_faint]


def image_features(model: UeDpoHF, docs: list[dict[str, Any]], *, batch_size: int) -> np.ndarray:
    """One row per doc: the image's features as the language model receives them, patch after patch."""
    family = family_of(model.model.config.model_type)
    owner = image_encoder_owner(model.model)
    rows = []
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        inputs = model.model_inputs([(CAPTION_PROMPT, shapes_doc_to_visual(doc)) for doc in batch])
        with torch.inference_mode():
            encoded = owner.get_image_features(**{key: inputs[key] for key in family.image_keys if key in inputs})
        per_image = getattr(encoded, "pooler_output", encoded)
        rows += [features.reshape(-1).float().numpy() for features in per_image]
    if len({len(row) for row in rows}) != 1:
        raise PerceivabilityError(
            "the held-out images have different numbers of image features (images of different sizes); the probe "
            "needs one feature vector length: write the held-out set at one image_size"
        )
    return np.stack(rows)


def blind_guess_level(docs: list[dict[str, Any]]) -> float:
    """The expected accuracy, in %, of a uniform guess among the shapes that an image's large shapes leave."""
    return float(np.mean([1 / (len(SHAPES) - (len(doc["shapes"]) - len(doc["faint"]))) for doc in docs])) * 100


def probe_faint_shape(
    features: np.ndarray, shapes: list[str], *, folds: int = PROBE_FOLDS, seed: int = PROBE_SEED
) -> dict[str, Any]:
    """Cross-validated accuracy of a linear probe that tells the faint shape from `features` (one row per image),
    in %, with its 95% Wilson interval and the chance level (the commonest shape's share)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rare = {shape: count for shape, count in Counter(shapes).items() if count < folds}
    if rare:
        raise PerceivabilityError(
            f"the held-out images hold too few of some faint shapes for a {folds}-fold probe ({rare}, at least "
            f"{folds} each); write more held-out images (synthetic.eval_images)"
        )
    labels = np.asarray(shapes)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(probe, features, labels, cv=split)
    return {
        **_accuracy(int((predicted == labels).sum()), len(labels)),
        "features_per_image": int(features.shape[1]),
        "folds": folds,
        "seed": seed,
    }


def faint_noun_scores(model: UeDpoHF, doc: dict[str, Any]) -> dict[str, float]:
    """Per shape, the log-probability of the doc's true caption with that shape as its faint noun ("small grey
    <shape>"), given the doc's image."""
    import torch.nn.functional as F
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    images = shapes_doc_to_visual(doc)
    prompt_ids = model.encode_prompt(CAPTION_PROMPT, images)
    scores = {}
    for shape in SHAPES:
        caption = re.sub(FAINT_SHAPE_WORDS, shape, doc["caption"])
        turn = [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": caption}]
        _, answer_ids = model.template.encode_oneturn(model.tokenizer, turn)  # the answer alone, as trained
        inputs = model.encoded_inputs([prompt_ids + answer_ids], [images])
        with torch.inference_mode():
            logits = model.model(**inputs).logits[0, len(prompt_ids) - 1 : -1].float()
        scores[shape] = float(F.log_softmax(logits, dim=-1).gather(-1, torch.tensor(answer_ids)[:, None]).sum())
    return scores


def _accuracy(correct: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n * 100, "interval": [low * 100, high * 100], "correct": correct}


def measure_perceivability(model_dir: str, eval_dir: Path, *, batch_size: int = 16) -> dict[str, Any]:
    """The probe and the forced noun of `model_dir` (a checkpoint `ue_dpo_hf` evaluates) on the held-out folder
    `eval_dir`, on CPU, with the floors to read them against (in %)."""
    docs, shapes = faint_images(eval_dir)
    counts = Counter(shapes)
    model = UeDpoHF(pretrained=model_dir, device="cpu", dtype="float32", batch_size=batch_size)
    probe = probe_faint_shape(image_features(model, docs, batch_size=batch_size), shapes)
    forced = [max(scores, key=scores.get) for scores in (faint_noun_scores(model, doc) for doc in docs)]
    return {
        "model": str(model_dir),
        "eval_dir": str(eval_dir),
        "n": len(docs),
        "faint_shapes": dict(sorted(counts.items())),
        "chance": max(counts.values()) / len(docs) * 100,
        "blind_guess": blind_guess_level(docs),
        "probe": probe,
        "forced_noun": _accuracy(sum(map(str.__eq__, forced, shapes)), len(docs)),
    }
