"""OCRBench scoring (lmms-eval 0.7.3 ``tasks/ocrbench/utils.py``).

A prediction is right when any gold answer is a substring of it. Handwritten mathematical
expressions (``dataset == "HME100k"``) compare case-sensitively with newlines and spaces
removed; everything else compares lower-cased, stripped, newlines as spaces, after folding
full-width ASCII to ASCII. The reported ``ocrbench_accuracy`` is the number right divided
by a fixed 1000 (the benchmark's size), whatever the number of documents scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The ten OCRBench question types and the number of questions of each (sum 1000).
OCRBENCH_CATEGORIES: dict[str, int] = {
    "Regular Text Recognition": 50,
    "Irregular Text Recognition": 50,
    "Artistic Text Recognition": 50,
    "Handwriting Recognition": 50,
    "Digit String Recognition": 50,
    "Non-Semantic Text Recognition": 50,
    "Scene Text-centric VQA": 200,
    "Doc-oriented VQA": 200,
    "Key Information Extraction": 200,
    "Handwritten Mathematical Expression Recognition": 100,
}
OCRBENCH_TOTAL = 1000
#: The six recognition types summed into the "Text Recognition (300)" line of the report.
TEXT_RECOGNITION: tuple[str, ...] = tuple(list(OCRBENCH_CATEGORIES)[:6])
HME_DATASET = "HME100k"


def fold_fullwidth_ascii(text: str) -> str:
    """U+FF01..U+FF5E to their ASCII forms and the ideographic space U+3000 to a space;
    nothing else (no NFKC)."""
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c) for c in text)


def ocrbench_correct(prediction: str, answers: str | Sequence[str], dataset: str) -> int:
    """1 if any gold answer is a substring of the prediction under its category's rule, else 0."""
    golds = [answers] if isinstance(answers, str) else list(answers)
    pred = prediction.strip()
    if dataset == HME_DATASET:
        # case-sensitive; "\n" -> " " then every space removed, on both sides
        p = pred.strip().replace("\n", " ").replace(" ", "")
        return int(any(g.strip().replace("\n", " ").replace(" ", "") in p for g in golds))
    p = fold_fullwidth_ascii(pred).lower().strip().replace("\n", " ")
    return int(any(fold_fullwidth_ascii(g).lower().strip().replace("\n", " ") in p for g in golds))


def ocrbench_sample(prediction: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"question_type", "score"}`` for one document (``doc`` needs ``answer``,
    ``dataset`` and ``question_type``)."""
    qtype = doc["question_type"]
    if qtype not in OCRBENCH_CATEGORIES:
        raise ValueError(f"unknown OCRBench question_type {qtype!r}")
    return {"question_type": qtype, "score": ocrbench_correct(prediction, doc["answer"], str(doc["dataset"]))}


def ocrbench_category_counts(samples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number right per question type (all ten listed, zero when absent) plus
    ``"Text Recognition"`` (the six recognition types) and ``"Final Score"`` (all)."""
    counts = dict.fromkeys(OCRBENCH_CATEGORIES, 0)
    for s in samples:
        counts[s["question_type"]] += int(s["score"])
    out = dict(counts)
    out["Text Recognition"] = sum(counts[c] for c in TEXT_RECOGNITION)
    out["Final Score"] = sum(counts.values())
    return out


def ocrbench_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """``ocrbench_accuracy``: right / 1000 (lmms-eval's number, correct only on the full set);
    ``ocrbench_doc_mean``: right / documents scored (the honest figure on a subset)."""
    right = ocrbench_category_counts(samples)["Final Score"]
    if metric == "ocrbench_accuracy":
        return right / OCRBENCH_TOTAL
    if metric == "ocrbench_doc_mean":
        return right / len(samples) if samples else 0.0
    raise KeyError(f"unknown OCRBench metric {metric!r}")
