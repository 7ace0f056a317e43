"""Exact CHAIR on the synthetic shapes world, where each image's shapes are known by construction.

A response's mentions are the shape words it contains (`ue_dpo.synthetic.shapes.mentioned_shapes`: singular or
plural, any case, every occurrence). A mention is hallucinated when its shape is not in the image.
Aggregates are totals over responses, in percent, counted by `ue_dpo.benchmarks.chair`, the CHAIR code of
Object-HalBench too:

- chair_s = responses with a hallucinated mention / responses mentioning at least one shape
- chair_s_all = responses with a hallucinated mention / all responses
- chair_i = hallucinated mentions / all mentions
- recall = distinct true shapes named / true shapes, summed over responses
- mean_shapes_mentioned = distinct shapes named per response, averaged over responses
- faint_recall (only when the records carry faint shapes, as in the blind-spot world) = distinct faint shapes
  named / faint shapes, summed over responses; a faint shape is named when its shape word is (the shapes of an
  image are distinct, so the word identifies it)
- faint_noun_accuracy (with faint_recall) = faint nouns that are the image's faint shape / faint nouns named, over
  the responses to images that hold a faint shape; a faint noun is the shape a response names as "small grey
  <shape>" (`ue_dpo.synthetic.vocabulary.named_faint_shapes`). It tells seeing the faint shape from saying that
  one is there: a caption that names "a small grey star" where the faint shape is a circle counts against it.
  Faint nouns named on images without a faint shape are hallucinations, counted by CHAIR, not here. Records
  logged before this metric existed carry no `faint_nouns`: it is None on them (evaluate again to have it).

A ratio whose denominator is zero is None (undefined), never 0.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ue_dpo.benchmarks.chair import CHAIR_METRICS, ChairCounts, chair_record, percent
from ue_dpo.synthetic.vocabulary import SHAPES, mentioned_shapes, named_faint_shapes

SHAPES_CHAIR_METRICS = (*CHAIR_METRICS, "mean_shapes_mentioned")
BLIND_SPOT_METRICS = (*SHAPES_CHAIR_METRICS, "faint_recall", "faint_noun_accuracy")


def shapes_caption_item_result(
    response: str, true_shapes: Sequence[str], faint_shapes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The per-response record that `shapes_chair_metrics` sums; `faint_shapes`, a subset of `true_shapes`, adds
    `faint_ground_truth`, `faint_covered` and `faint_nouns` (the shapes named as "small grey <shape>")."""
    if not isinstance(response, str):
        raise TypeError(f"a shapes caption response must be a string, got {type(response).__name__}: {response!r:.80}")
    truth = set(true_shapes)
    unknown = truth.difference(SHAPES)
    if unknown:
        raise ValueError(f"ground-truth shapes {sorted(unknown)} are not shapes of this world ({', '.join(SHAPES)})")
    mentions = mentioned_shapes(response)
    record: dict[str, Any] = chair_record(mentions, truth)
    if faint_shapes is not None:
        faint = set(faint_shapes)
        if not faint <= truth:
            raise ValueError(
                f"faint shapes {sorted(faint - truth)} are not among the image's shapes {sorted(truth)}; "
                f"list every faint shape in the true shapes too"
            )
        record["faint_ground_truth"] = sorted(faint)
        record["faint_covered"] = sorted(faint.intersection(mentions))
        record["faint_nouns"] = named_faint_shapes(response)
    return record


def shapes_chair_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over `shapes_caption_item_result` records: the five metrics plus the counts behind them, and
    faint_recall with its counts when the records carry faint shapes."""
    counts = ChairCounts()
    distinct_mentioned = 0
    faint_ground_truth = faint_covered = None
    faint_nouns_named = faint_nouns_right = 0
    faint_nouns_logged = True
    for record in records:
        if "faint_ground_truth" in record:
            faint_ground_truth = (faint_ground_truth or 0) + len(record["faint_ground_truth"])
            faint_covered = (faint_covered or 0) + len(record["faint_covered"])
            faint_nouns_logged = faint_nouns_logged and "faint_nouns" in record
            if record["faint_ground_truth"] and "faint_nouns" in record:
                faint_nouns_named += len(record["faint_nouns"])
                faint_nouns_right += sum(noun in record["faint_ground_truth"] for noun in record["faint_nouns"])
        counts.add(record)
        distinct_mentioned += len(set(record["mentions"]))
    n = counts.responses
    metrics = {
        **counts.metrics(),
        "mean_shapes_mentioned": distinct_mentioned / n if n else None,
        "n": n,
        "responses_with_mentions": counts.responses_with_mentions,
        "hallucinated_responses": counts.hallucinated_responses,
        "mentions": counts.mentions,
        "hallucinated_mentions": counts.hallucinated_mentions,
        "ground_truth_shapes": counts.ground_truth,
        "covered_shapes": counts.covered,
    }
    if faint_ground_truth is not None:
        metrics.update(
            faint_recall=percent(faint_covered, faint_ground_truth),
            faint_shapes=faint_ground_truth,
            covered_faint_shapes=faint_covered,
            faint_noun_accuracy=percent(faint_nouns_right, faint_nouns_named) if faint_nouns_logged else None,
            faint_nouns_named=faint_nouns_named if faint_nouns_logged else None,
            faint_nouns_right=faint_nouns_right if faint_nouns_logged else None,
        )
    return metrics


def score_shapes_captions(
    responses: Sequence[str], true_shapes: Sequence[Sequence[str]], faint_shapes: Sequence[Sequence[str]] | None = None
) -> dict[str, Any]:
    if len(responses) != len(true_shapes) or (faint_shapes is not None and len(faint_shapes) != len(responses)):
        raise ValueError(
            f"got {len(responses)} responses for {len(true_shapes)} images"
            f"{'' if faint_shapes is None else f' and {len(faint_shapes)} lists of faint shapes'}; "
            f"pass one response per image"
        )
    faint = [None] * len(responses) if faint_shapes is None else faint_shapes
    return shapes_chair_metrics(
        shapes_caption_item_result(response, truth, faint_of_image)
        for response, truth, faint_of_image in zip(responses, true_shapes, faint)
    )
