"""Yes/no benchmarks: POPE, MME and HallusionBench (rule-based judge).

References (lmms-eval 0.7.3):
* POPE: ``tasks/pope/utils.py``;
* MME: ``tasks/mme/utils.py`` (``parse_pred_ans`` is the Otter parser it cites);
* HallusionBench: ``tasks/hallusion_bench/evaluate_hb.py`` and ``utils.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

# --------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------


def pope_sample(prediction: str, answer: str) -> dict[str, Any]:
    """One POPE answer: ``prediction`` lower-cased and stripped must *equal* the gold.

    No parsing: "yes." or "Yes, there is" are wrong and count as neither yes nor no in
    precision/recall. Returns ``{"score", "prediction", "ground_truth"}``.
    """
    pred = prediction.lower().strip()
    gt = answer.lower().strip()
    if gt not in ("yes", "no"):
        raise ValueError(f"POPE gold answer must be yes/no, got {answer!r}")
    return {"score": 1.0 if pred == gt else 0.0, "prediction": pred, "ground_truth": gt}


def pope_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """POPE metrics over :func:`pope_sample` results, "yes" being the positive class.

    * ``pope_accuracy``: mean score;
    * ``pope_precision``: TP / (TP + FP), FP = gold no & pred "yes";
    * ``pope_recall``: TP / (TP + FN), FN = gold yes & pred exactly "no" (an unparseable
      answer to a yes-question is neither TP nor FN, as in the reference);
    * ``pope_f1_score``: harmonic mean of the two;
    * ``pope_yes_ratio``: share of *ground-truth* "yes" (not of predicted yes).
    Empty denominators give 0.
    """
    if metric == "pope_accuracy":
        return sum(s["score"] for s in samples) / len(samples) if samples else 0.0
    tp = sum(1 for s in samples if s["ground_truth"] == "yes" and s["prediction"] == "yes")
    fp = sum(1 for s in samples if s["ground_truth"] == "no" and s["prediction"] == "yes")
    fn = sum(1 for s in samples if s["ground_truth"] == "yes" and s["prediction"] == "no")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if metric == "pope_precision":
        return precision
    if metric == "pope_recall":
        return recall
    if metric == "pope_f1_score":
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if metric == "pope_pred_yes_ratio":  # ours, not lmms-eval's: the model's share of "yes" (its yes-bias)
        return sum(1 for s in samples if s["prediction"] == "yes") / len(samples) if samples else 0.0
    if metric == "pope_yes_ratio":
        yes = sum(1 for s in samples if s["ground_truth"] == "yes")
        no = sum(1 for s in samples if s["ground_truth"] == "no")
        return yes / (yes + no) if yes + no else 0.0
    raise KeyError(f"unknown POPE metric {metric!r}")


# --------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------

MME_PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION: tuple[str, ...] = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(prediction: str) -> str:
    """MME's answer parser: ``"yes"``, ``"no"`` or ``"other"``.

    Lower-case, strip, delete every period; an exact "yes"/"no" wins; a one-character answer
    counts only as "y"/"n"; otherwise "yes" is searched in the first 4 characters, then "no"
    (so "Yes, it is" -> yes, "Not at all" -> no, "The answer is yes" -> other).
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_metric_for(category: str) -> str:
    """The metric an MME category feeds: perception for the 10 perception categories,
    cognition for everything else (the reference's else-branch)."""
    return "mme_perception_score" if category in MME_PERCEPTION else "mme_cognition_score"


def mme_sample(prediction: str, answer: str, category: str, question_id: str) -> dict[str, Any]:
    """One MME answer: ``{"question_id", "category", "score"}``; ``question_id`` is the image
    path, shared by the image's two questions (one yes, one no)."""
    gt = answer.lower().strip().replace(".", "")
    if gt not in ("yes", "no"):
        raise ValueError(f"MME gold answer must be yes/no, got {answer!r}")
    return {"question_id": question_id, "category": category, "score": 1.0 if mme_parse(prediction) == gt else 0.0}


def mme_category_scores(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per category: ``acc`` (% of questions right), ``acc_plus`` (% of images with both
    questions right) and ``score = acc + acc_plus`` (0-200).

    Computed as the reference does: per image ``acc = mean(scores) * 100`` and
    ``acc+ = 100 if both right``, averaged over the category's images. Every image must
    contribute exactly two questions ("MME only supports pairwise evaluation").
    """
    by_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_cat[s["category"]][s["question_id"]].append(float(s["score"]))
    out: dict[str, dict[str, float]] = {}
    for cat, images in by_cat.items():
        acc_total = acc_plus_total = 0.0
        for qid, scores in images.items():
            if len(scores) != 2:
                raise ValueError(f"MME image {qid!r} of {cat!r} has {len(scores)} questions; MME scores pairs")
            acc_total += sum(scores) / len(scores) * 100.0
            acc_plus_total += 100.0 if sum(scores) == 2 else 0.0
        n = len(images)
        out[cat] = {"acc": acc_total / n, "acc_plus": acc_plus_total / n, "score": (acc_total + acc_plus_total) / n}
    return out


def mme_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """Sum over the categories present of ``acc + acc+``: perception out of 2000 (10
    categories), cognition out of 800 (4). ``samples`` are those routed to ``metric``;
    a sample of the other half is an error (lmms-eval never mixes them)."""
    for s in samples:
        if mme_metric_for(s["category"]) != metric:
            raise ValueError(f"MME category {s['category']!r} does not belong to {metric!r}")
    return sum(c["score"] for c in mme_category_scores(samples).values())


# --------------------------------------------------------------------------------------
# HallusionBench, rule-based judge
# --------------------------------------------------------------------------------------


def hallusion_rule_judge(prediction: str) -> str:
    """``"1"`` if the answer contains "yes" anywhere (case-insensitive), else ``"0"``.

    This is lmms-eval's own GPT-free rule (``hb_aggregation_result_intern``); lmms-eval's
    default asks a GPT judge "correct/incorrect/unclear", which this package does not call.
    """
    return "1" if "yes" in prediction.lower() else "0"


def hallusion_sample(prediction: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """One HallusionBench answer judged by :func:`hallusion_rule_judge` against ``gt_answer``,
    with the grouping keys the aggregates need."""
    judged = hallusion_rule_judge(prediction)
    return {
        "category": str(doc["category"]),
        "subcategory": str(doc["subcategory"]),
        "set_id": str(doc["set_id"]),
        "figure_id": str(doc["figure_id"]),
        "question_id": str(doc["question_id"]),
        "judged": judged,
        "correct": 1 if judged == str(doc["gt_answer"]).strip() else 0,
    }


def _all_right_share(samples: Sequence[Mapping[str, Any]], key_fields: tuple[str, ...]) -> float:
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for s in samples:
        groups[tuple(str(s[k]) for k in key_fields)].append(int(s["correct"]))
    if not groups:
        return 0.0
    return round(100 * sum(1 for v in groups.values() if all(v)) / len(groups), 4)


def hallusion_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """HallusionBench metrics in percent rounded to 4 decimals, grouped as the official
    evaluation (``get_eval_all`` / ``get_eval_fig`` / ``get_eval_pair_all``):

    * ``aAcc``: share of questions right;
    * ``fAcc``: share of figures (category, subcategory, set_id, figure_id) whose questions are
      all right; VS questions with ``figure_id == "0"`` (no figure shown) are left out;
    * ``qAcc``: share of questions (category, subcategory, set_id, question_id) right on every
      figure variant.
    """
    if metric == "aAcc":
        if not samples:
            return 0.0
        return round(100 * sum(1 for s in samples if s["correct"]) / len(samples), 4)
    if metric == "fAcc":
        with_figure = [s for s in samples if not (s["category"] == "VS" and str(s["figure_id"]) == "0")]
        return _all_right_share(with_figure, ("category", "subcategory", "set_id", "figure_id"))
    if metric == "qAcc":
        return _all_right_share(samples, ("category", "subcategory", "set_id", "question_id"))
    raise KeyError(f"unknown HallusionBench metric {metric!r}")
