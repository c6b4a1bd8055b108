"""Per-task ``process_results`` / ``aggregate`` / per-sample score, wiring the scorers to docs.

Every ``process_results(doc, response)`` takes the model's *raw* generation and cleans it
itself (:func:`~vlmcompress.tasks.lmms.normalize.clean_response`), in the order lmms-eval
applies its steps: the task's YAML filter on the raw text (only AI2D has one), then
reasoning-block stripping, then ``.strip()``, then the task's scorer. Cleaning is
idempotent, so already-cleaned text gives the same result.

Each returns ``{metric: per-sample value}`` like lmms-eval's ``process_results``: a number
for "mean" metrics, a small dict for metrics aggregated by groups. A metric absent from a
sample's dict gets nothing from that sample (ChartQA's splits, MME's two halves, MMStar's
categories), exactly as in lmms-eval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .mmbench import mmbench_aggregate, mmbench_sample
from .mmmu import mmmu_aggregate, mmmu_sample
from .multiple_choice import (
    MMSTAR_CATEGORIES,
    ai2d_correct,
    ai2d_filter,
    mmstar_correct,
    mmstar_macro_mean,
    option_letters,
    realworldqa_correct,
    scienceqa_correct,
)
from .normalize import clean_response
from .ocrbench import ocrbench_aggregate, ocrbench_sample
from .vqa import anls, exact_match, relaxed_accuracy, vqa_accuracy
from .yesno import hallusion_aggregate, hallusion_sample, mme_aggregate, mme_metric_for, mme_sample, pope_aggregate, pope_sample

Results = dict[str, Any]
ProcessResults = Callable[[Mapping[str, Any], str], Results]
Aggregate = Callable[[str, Sequence[Any]], float]
SampleScore = Callable[[Results], float]


def mean_aggregate(metric: str, values: Sequence[Any]) -> float:
    """lmms-eval's ``mean`` aggregation (``sum / len``); 0.0 for no values."""
    return float(sum(values) / len(values)) if values else 0.0


def metric_value(metric: str) -> SampleScore:
    """Per-sample score read straight from a numeric metric value."""
    return lambda r: float(r[metric])


# --- POPE ------------------------------------------------------------------------------

POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


def pope_process_results(doc: Mapping[str, Any], response: str) -> Results:
    s = pope_sample(clean_response(response), str(doc["answer"]))
    return {m: s for m in (*POPE_METRICS, "pope_pred_yes_ratio")}


def pope_sample_score(r: Results) -> float:
    return float(r["pope_accuracy"]["score"])


# --- MME -------------------------------------------------------------------------------


def mme_process_results(doc: Mapping[str, Any], response: str) -> Results:
    s = mme_sample(clean_response(response), str(doc["answer"]), str(doc["category"]), str(doc["question_id"]))
    return {mme_metric_for(s["category"]): s}


def mme_sample_score(r: Results) -> float:
    (value,) = r.values()
    return float(value["score"])


# --- open-answer VQA -------------------------------------------------------------------


def vqa_process_results(variant: str) -> ProcessResults:
    def process(doc: Mapping[str, Any], response: str) -> Results:
        return {"exact_match": vqa_accuracy(clean_response(response), list(doc["answers"] or []), variant)}  # type: ignore[arg-type]

    return process


def anls_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"anls": anls(clean_response(response), list(doc["answers"]))}


def chartqa_process_results(doc: Mapping[str, Any], response: str) -> Results:
    score = relaxed_accuracy(clean_response(response), str(doc["answer"]))
    split = "relaxed_human_split" if doc["type"] == "human_test" else "relaxed_augmented_split"
    return {"relaxed_overall": score, split: score}


def gqa_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"exact_match": exact_match(clean_response(response), str(doc["answer"]), ignore_case=True, ignore_punctuation=True)}


# --- OCRBench --------------------------------------------------------------------------


def ocrbench_process_results(doc: Mapping[str, Any], response: str) -> Results:
    s = ocrbench_sample(clean_response(response), doc)
    return {"ocrbench_accuracy": s, "ocrbench_doc_mean": s}


def ocrbench_sample_score(r: Results) -> float:
    return float(r["ocrbench_accuracy"]["score"])


# --- letter answers --------------------------------------------------------------------


def scienceqa_target(doc: Mapping[str, Any]) -> str:
    return option_letters(len(doc["choices"]))[int(doc["answer"])]


def scienceqa_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"exact_match": scienceqa_correct(clean_response(response), scienceqa_target(doc))}


def ai2d_target(doc: Mapping[str, Any]) -> str:
    return option_letters(len(doc["options"]))[int(doc["answer"])]


def ai2d_process_results(doc: Mapping[str, Any], response: str) -> Results:
    # the filter sees the raw generation, then reasoning blocks go (lmms-eval's order)
    filtered = clean_response(ai2d_filter(response))
    return {"exact_match": ai2d_correct(filtered, ai2d_target(doc))}


def realworldqa_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"exact_match": realworldqa_correct(clean_response(response), str(doc["answer"]))}


MMSTAR_METRICS = (*MMSTAR_CATEGORIES, "average")


def mmstar_process_results(doc: Mapping[str, Any], response: str) -> Results:
    value = {
        "question_id": doc["index"],
        "l2_category": doc["l2_category"],
        "score": mmstar_correct(clean_response(response), str(doc["answer"])),
    }
    return {str(doc["category"]): value, "average": value}


def mmstar_aggregate(metric: str, values: Sequence[Mapping[str, Any]]) -> float:
    if metric not in MMSTAR_METRICS:
        raise KeyError(f"unknown MMStar metric {metric!r}")
    return mmstar_macro_mean(values)


def mmstar_sample_score(r: Results) -> float:
    return float(r["average"]["score"])


def mmbench_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"gpt_eval_score": mmbench_sample(clean_response(response), doc)}


def mmbench_sample_score(r: Results) -> float:
    return float(r["gpt_eval_score"]["correct"])


def mmmu_process_results(doc: Mapping[str, Any], response: str) -> Results:
    return {"mmmu_acc": mmmu_sample(clean_response(response), doc)}


def mmmu_sample_score(r: Results) -> float:
    return float(r["mmmu_acc"]["correct"])


# --- HallusionBench --------------------------------------------------------------------

HALLUSION_METRICS = ("aAcc", "qAcc", "fAcc")


def hallusion_process_results(doc: Mapping[str, Any], response: str) -> Results:
    s = hallusion_sample(clean_response(response), doc)
    return {m: s for m in HALLUSION_METRICS}


def hallusion_sample_score(r: Results) -> float:
    return float(r["aAcc"]["correct"])


__all__ = [
    "Aggregate",
    "ProcessResults",
    "Results",
    "SampleScore",
    "hallusion_aggregate",
    "mean_aggregate",
    "mmbench_aggregate",
    "mme_aggregate",
    "mmmu_aggregate",
    "ocrbench_aggregate",
    "pope_aggregate",
]
