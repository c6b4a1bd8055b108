"""Open-answer scorers: VQA accuracy, ANLS, ChartQA relaxed accuracy, lmms-eval exact match.

References (lmms-eval 0.7.3):
* VQA accuracy: ``tasks/textvqa/utils.py``, ``tasks/vizwiz_vqa/utils.py``, ``tasks/vqav2/utils.py``;
* ANLS: ``api/metrics.py::anls`` (+ ``levenshtein_distance``);
* relaxed accuracy: ``tasks/chartqa/utils.py::relaxed_correctness``;
* exact match: ``api/metrics.py::exact_match_hf_evaluate`` with the YAML's options.
"""

from __future__ import annotations

import statistics
import string
from collections.abc import Mapping, Sequence
from typing import Literal

from .normalize import evalai_normalize, vqav2_normalize

VqaVariant = Literal["evalai", "vqav2"]


def vqa_accuracy(prediction: str, answers: Sequence[str | Mapping[str, object]], variant: VqaVariant = "evalai") -> float:
    """VQA accuracy: mean over the gold answers of ``min(1, matches among the others / 3)``.

    With 10 human answers this is the "10-choose-9" average of the official metric: each
    answer is left out in turn and the prediction scores ``min(1, n/3)`` against the other 9.

    ``variant="evalai"`` (TextVQA, VizWiz) normalises prediction and every answer with the
    full EvalAI processor; ``variant="vqav2"`` uses the VQAv2 path (no blanket ``,``/``?``
    removal, no ``'s`` split). VQAv2 answers are dicts with an ``"answer"`` key; there the
    reference leaves out every dict *equal* to the current one, which with the dataset's
    unique ``answer_id`` is one answer: we compare the same way. Plain strings are left out
    by position.

    No answers scores 0.0 (VizWiz's rule; TextVQA would raise).
    """
    if variant not in ("evalai", "vqav2"):
        raise ValueError(f"unknown VQA variant {variant!r}; expected 'evalai' or 'vqav2'")
    norm = evalai_normalize if variant == "evalai" else vqav2_normalize
    pred = norm(prediction)
    items: list[object] = []
    for a in answers:
        if isinstance(a, Mapping):
            d = dict(a)
            d["answer"] = norm(str(d["answer"]))
            items.append(d)
        else:
            items.append(norm(str(a)))
    if not items:
        return 0.0

    def text(item: object) -> str:
        return item["answer"] if isinstance(item, dict) else item  # type: ignore[index,return-value]

    accs = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            others = [o for o in items if o != item]
        else:
            others = [o for j, o in enumerate(items) if j != i]
        matches = sum(1 for o in others if text(o) == pred)
        accs.append(min(1.0, matches / 3))
    # statistics.mean, as the reference, so the float is bit-identical
    return float(statistics.mean(accs))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; all cost 1)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for i, cb in enumerate(b, start=1):
        current = [i]
        for j, ca in enumerate(a, start=1):
            cost = 0 if ca == cb else 1
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one question (``api/metrics.py::anls``).

    Per gold answer: both strings lower-cased, stripped and whitespace-collapsed; the distance
    between them is divided by ``max(len(answer.upper()), len(prediction.upper()))`` of the
    *raw* strings (the reference's choice: extra inner spaces lengthen the divisor). The
    question scores ``1 - min(normalised distance)``, set to 0 only when strictly below the
    threshold (a similarity of exactly 0.5 is kept). No answers scores 0.0.
    """
    if not answers:
        return 0.0
    det = " ".join(prediction.strip().lower().split())
    values = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else levenshtein(gt, det) / length)
    score = 1 - min(values)
    return 0.0 if score < threshold else float(score)


def _to_float(text: str) -> float | None:
    """ChartQA's number reading: Python ``float``; a trailing ``%`` (all of them) divides by 100."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, tolerance: float = 0.05) -> float:
    """ChartQA relaxed correctness (``tasks/chartqa/utils.py::relaxed_correctness``), 1.0 or 0.0.

    When both read as numbers and the target is non-zero: correct iff
    ``|pred - target| / |target| <= tolerance`` (inclusive). Otherwise (text, or a zero
    target) a case-insensitive exact string match: so "0.0" against a target "0" is wrong.
    """
    p = _to_float(prediction)
    t = _to_float(target)
    if p is not None and t:
        return 1.0 if abs(p - t) / abs(t) <= tolerance else 0.0
    return 1.0 if prediction.lower() == target.lower() else 0.0


_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def exact_match(prediction: str, reference: str, *, ignore_case: bool = False, ignore_punctuation: bool = False) -> float:
    """lmms-eval's registered ``exact_match`` on one pair (``exact_match_hf_evaluate``).

    ``ignore_case`` lower-cases both; ``ignore_punctuation`` deletes every ASCII
    ``string.punctuation`` character from both (nothing else: spaces and articles stay).
    """
    p, r = prediction, reference
    if ignore_case:
        p, r = p.lower(), r.lower()
    if ignore_punctuation:
        p, r = p.translate(_PUNCT_TABLE), r.translate(_PUNCT_TABLE)
    return 1.0 if p == r else 0.0
