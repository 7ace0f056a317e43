"""CHAIR (Rohrbach et al., 2018) as totals over responses: the one implementation behind Object-HalBench (COCO
objects, `ue_dpo.benchmarks.object_halbench`) and the synthetic shapes tasks (ground truth known by construction,
`ue_dpo.benchmarks.shapes_chair`). Each benchmark finds a response's mentions its own way; from the mentions on,
the counting is this module's.

A response's record holds its mentions in order, repeats included, the hallucinated ones (their object is not in
the ground truth), the distinct ground-truth objects it names (`covered`) and the ground truth. Over the records,
in percent:

- chair_s = responses with a hallucinated mention / responses with at least one mention
- chair_s_all = responses with a hallucinated mention / all responses
- chair_i = hallucinated mentions / all mentions
- recall = covered ground-truth objects / ground-truth objects, both summed over responses

A ratio whose denominator is zero is None (undefined), never 0. An empty response mentions nothing: it counts in
chair_s_all and recall, not in chair_s.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAIR_METRICS = ("chair_s", "chair_s_all", "chair_i", "recall")


def percent(numerator: float, denominator: float) -> float | None:
    """numerator / denominator in percent; None when the denominator is zero."""
    return numerator / denominator * 100 if denominator else None


def _itself(mention: Any) -> Any:
    return mention


def chair_record(
    mentions: Sequence[Any], ground_truth: Iterable[str], object_of: Callable[[Any], str] = _itself
) -> dict[str, list[Any]]:
    """{"mentions", "hallucinated", "covered", "ground_truth"} of one response. `mentions` are in order, repeats
    included; `object_of(mention)` is the object a mention names (the mention itself by default)."""
    truth = set(ground_truth)
    return {
        "mentions": list(mentions),
        "hallucinated": [mention for mention in mentions if object_of(mention) not in truth],
        "covered": sorted({object_of(mention) for mention in mentions} & truth),
        "ground_truth": sorted(truth),
    }


@dataclass
class ChairCounts:
    """The totals behind CHAIR, summed over `chair_record` records (or records with the same four lists)."""

    responses: int = 0
    responses_with_mentions: int = 0
    hallucinated_responses: int = 0
    mentions: int = 0
    hallucinated_mentions: int = 0
    ground_truth: int = 0
    covered: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        self.responses += 1
        self.responses_with_mentions += bool(record["mentions"])
        self.hallucinated_responses += bool(record["hallucinated"])
        self.mentions += len(record["mentions"])
        self.hallucinated_mentions += len(record["hallucinated"])
        self.ground_truth += len(record["ground_truth"])
        self.covered += len(record["covered"])

    def metrics(self) -> dict[str, float | None]:
        """chair_s, chair_s_all, chair_i and recall, in percent (None where undefined)."""
        return {
            "chair_s": percent(self.hallucinated_responses, self.responses_with_mentions),
            "chair_s_all": percent(self.hallucinated_responses, self.responses),
            "chair_i": percent(self.hallucinated_mentions, self.mentions),
            "recall": percent(self.covered, self.ground_truth),
        }


def chair_counts(records: Iterable[Mapping[str, Any]]) -> ChairCounts:
    counts = ChairCounts()
    for record in records:
        counts.add(record)
    return counts
