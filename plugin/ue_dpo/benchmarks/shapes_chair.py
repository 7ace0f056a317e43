"""Exact CHAIR on the synthetic shapes world, where each image's shapes are known by construction.

A response's mentions are the shape words it contains (`ue_dpo.synthetic.shapes.mentioned_shapes`: singular or
plural, any case, every occurrence). A mention is hallucinated when its shape is not in the image.
Aggregates are totals over responses, in percent, with the Object-HalBench semantics:

- chair_s = responses with a hallucinated mention / responses mentioning at least one shape
- chair_s_all = responses with a hallucinated mention / all responses
- chair_i = hallucinated mentions / all mentions
- recall = distinct true shapes named / true shapes, summed over responses
- mean_shapes_mentioned = distinct shapes named per response, averaged over responses

A ratio whose denominator is zero is None (undefined), never 0.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ue_dpo.synthetic.shapes import SHAPES, mentioned_shapes

SHAPES_CHAIR_METRICS = ("chair_s", "chair_s_all", "chair_i", "recall", "mean_shapes_mentioned")


def shapes_caption_item_result(response: str, true_shapes: Sequence[str]) -> dict[str, Any]:
    """The per-response record that `shapes_chair_metrics` sums."""
    if not isinstance(response, str):
        raise TypeError(f"a shapes caption response must be a string, got {type(response).__name__}: {response!r:.80}")
    truth = set(true_shapes)
    unknown = truth.difference(SHAPES)
    if unknown:
        raise ValueError(f"ground-truth shapes {sorted(unknown)} are not shapes of this world ({', '.join(SHAPES)})")
    mentions = mentioned_shapes(response)
    return {
        "mentions": mentions,
        "hallucinated": [shape for shape in mentions if shape not in truth],
        "covered": sorted(truth.intersection(mentions)),
        "ground_truth": sorted(truth),
    }


def _percent(numerator: int, denominator: int) -> float | None:
    return numerator / denominator * 100 if denominator else None


def shapes_chair_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over `shapes_caption_item_result` records: the five metrics plus the counts behind them."""
    n = responses_with_mentions = hallucinated_responses = mentions = hallucinated_mentions = 0
    ground_truth = covered = distinct_mentioned = 0
    for record in records:
        n += 1
        responses_with_mentions += bool(record["mentions"])
        hallucinated_responses += bool(record["hallucinated"])
        mentions += len(record["mentions"])
        hallucinated_mentions += len(record["hallucinated"])
        ground_truth += len(record["ground_truth"])
        covered += len(record["covered"])
        distinct_mentioned += len(set(record["mentions"]))
    return {
        "chair_s": _percent(hallucinated_responses, responses_with_mentions),
        "chair_s_all": _percent(hallucinated_responses, n),
        "chair_i": _percent(hallucinated_mentions, mentions),
        "recall": _percent(covered, ground_truth),
        "mean_shapes_mentioned": distinct_mentioned / n if n else None,
        "n": n,
        "responses_with_mentions": responses_with_mentions,
        "hallucinated_responses": hallucinated_responses,
        "mentions": mentions,
        "hallucinated_mentions": hallucinated_mentions,
        "ground_truth_shapes": ground_truth,
        "covered_shapes": covered,
    }


def score_shapes_captions(responses: Sequence[str], true_shapes: Sequence[Sequence[str]]) -> dict[str, Any]:
    if len(responses) != len(true_shapes):
        raise ValueError(f"got {len(responses)} responses for {len(true_shapes)} images; pass one response per image")
    return shapes_chair_metrics(
        shapes_caption_item_result(response, truth) for response, truth in zip(responses, true_shapes)
    )
