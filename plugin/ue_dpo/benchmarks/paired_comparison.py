"""Metric differences between two runs on the same benchmark items, with paired bootstrap intervals.

The inputs are lmms-eval's logged samples of one task (the lines of `*_samples_<task>.jsonl`): each holds
`doc_id`, `target` and, under every metric name, the record our task's `process_results` returned for the doc.
The two runs' samples are paired by `doc_id`. Each bootstrap resample draws items with replacement (the same
draw for both runs) and recomputes every paired metric with the benchmark's own aggregation on the drawn records
(both named by the task's descriptor in `ue_dpo.benchmarks.registry`). A ratio metric is therefore the
ratio of the resampled totals, as the metric is defined (CHAIRi = hallucinated mentions / mentions over the
drawn items), never a mean of per-item ratios; AMBER's metrics keep their official rounding to one decimal.
The interval is the percentile interval of ue_dpo.statistics.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ue_dpo.benchmarks.registry import Benchmark, paired_tasks
from ue_dpo.statistics import (
    CONFIDENCE_LEVEL,
    bootstrap_item_indices,
    check_confidence_level,
    percentile_interval,
)


class PairingError(ValueError):
    """The two runs' logged samples cannot be paired item by item."""


class MetricDifference(NamedTuple):
    a: float | None
    b: float | None
    delta: float | None  # b - a
    low: float | None
    high: float | None


# The metric names are the tasks' lmms-eval metric names (eval_tasks/*.yaml), so A and B equal lmms-eval's results.
PAIRED_TASKS: Mapping[str, Benchmark] = paired_tasks()


def _records_by_doc(
    samples: Sequence[Mapping[str, Any]], task: str, run: str
) -> dict[Any, tuple[str, Mapping[str, Any]]]:
    record_key = PAIRED_TASKS[task].record_key
    by_doc: dict[Any, tuple[str, Mapping[str, Any]]] = {}
    for position, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "doc_id" not in sample or not isinstance(sample.get(record_key), Mapping):
            raise PairingError(
                f"{task}, run {run}: logged sample {position} has no `doc_id` or no `{record_key}` record; "
                f"pass the lines of lmms-eval's *_samples_{task}.jsonl written with --log_samples"
            )
        if sample["doc_id"] in by_doc:
            raise PairingError(
                f"{task}, run {run}: doc_id {sample['doc_id']} is logged twice; use the samples of one lmms-eval run"
            )
        by_doc[sample["doc_id"]] = (str(sample.get("target")), sample[record_key])
    return by_doc


def _few(values: Sequence[Any]) -> str:
    return ", ".join(map(str, values[:5])) + (" ..." if len(values) > 5 else "")


def paired_records(
    samples_a: Sequence[Mapping[str, Any]], samples_b: Sequence[Mapping[str, Any]], task: str
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The two runs' per-doc records in the same doc_id order, after checking they cover the same items."""
    if task not in PAIRED_TASKS:
        raise PairingError(f"no paired comparison for task {task!r}; supported: {', '.join(PAIRED_TASKS)}")
    docs_a, docs_b = _records_by_doc(samples_a, task, "A"), _records_by_doc(samples_b, task, "B")
    only_a, only_b = sorted(set(docs_a) - set(docs_b)), sorted(set(docs_b) - set(docs_a))
    if only_a or only_b:
        raise PairingError(
            f"{task}: the runs do not cover the same items (A has {len(docs_a)}, B has {len(docs_b)}; doc_ids only in "
            "A: "
            f"{_few(only_a) or 'none'}; only in B: {_few(only_b) or 'none'}); evaluate both on the same data with the "
            f"same --limit"
        )
    doc_ids = sorted(docs_a)
    differing = [doc_id for doc_id in doc_ids if docs_a[doc_id][0] != docs_b[doc_id][0]]
    if differing:
        doc_id = differing[0]
        raise PairingError(
            f"{task}: the runs do not cover the same items: {len(differing)} doc_id(s) have different "
            f"targets, e.g. doc_id {doc_id}: {docs_a[doc_id][0]!r:.80} in A, {docs_b[doc_id][0]!r:.80} in B; "
            f"evaluate both on the same data"
        )
    records_a = [docs_a[doc_id][1] for doc_id in doc_ids]
    records_b = [docs_b[doc_id][1] for doc_id in doc_ids]
    for field in PAIRED_TASKS[task].same_in_both_runs:
        values_a = {record.get(field) for record in records_a}
        values_b = {record.get(field) for record in records_b}
        if values_a != values_b:
            raise PairingError(
                f"{task}: the runs differ in {field} ({sorted(map(str, values_a))} in A, "
                f"{sorted(map(str, values_b))} in B), so their metrics are not comparable"
            )
    return records_a, records_b


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def paired_differences(
    samples_a: Sequence[Mapping[str, Any]],
    samples_b: Sequence[Mapping[str, Any]],
    task: str,
    *,
    resamples: int,
    seed: int,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, MetricDifference]:
    """metric -> (A, B, B - A, low, high) for one task: the metrics of each run on all paired items, and the
    paired bootstrap interval of B - A from `resamples` draws of numpy's generator seeded with `seed`.

    A metric undefined on a resample (a zero denominator in either run) leaves that resample out of its
    interval; low and high are None when it is undefined on every resample or on the full sample.
    """
    check_confidence_level(level)
    records_a, records_b = paired_records(samples_a, samples_b, task)
    spec = PAIRED_TASKS[task]
    if not records_a:
        raise PairingError(f"{task}: no logged samples to compare")
    full_a, full_b = spec.aggregate(records_a), spec.aggregate(records_b)
    deltas: dict[str, list[float | None]] = {name: [] for name in spec.paired_metrics}
    for row in bootstrap_item_indices(len(records_a), resamples, seed):
        resampled_a = spec.aggregate([records_a[index] for index in row])
        resampled_b = spec.aggregate([records_b[index] for index in row])
        for name, pick in spec.paired_metrics.items():
            deltas[name].append(_difference(pick(resampled_a), pick(resampled_b)))
    result = {}
    for name, pick in spec.paired_metrics.items():
        a, b = pick(full_a), pick(full_b)
        delta = _difference(a, b)
        defined = [value for value in deltas[name] if value is not None]
        low, high = percentile_interval(defined, level) if delta is not None and defined else (None, None)
        result[name] = MetricDifference(a, b, delta, low, high)
    return result
