"""MMBench (EN dev) with circular evaluation and a rule-based answer extraction.

Reference: lmms-eval 0.7.3 ``tasks/mmbench/mmbench_evals.py`` (``MMBench_Evaluator``:
``can_infer_option``, ``can_infer_text``, ``eval_sub_data``, ``eval_result``) and
``tasks/mmbench/en_utils.py``. lmms-eval's ``mmbench_en_dev`` sends answers the rules
cannot resolve to a GPT judge; this module follows its ``mmbench_en_dev_static`` path
instead (``eval_method="static"``), which resolves them with ``extract_mcq_answer``.
Scores are marked ``judge: rule-based`` by the task spec for that reason.
"""

from __future__ import annotations

import math
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .multiple_choice import extract_mcq_answer

CIRCULAR_BASE = 1_000_000  # rotated copies have index = original index + k * 1e6
_INFER_TUPS: tuple[tuple[str, str], ...] = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)


def _is_missing(value: object) -> bool:
    """``pd.isna`` for the values a dataset row can hold: None or a float NaN.
    (The string "nan" is *not* missing here, exactly as for pandas.)"""
    return value is None or (isinstance(value, float) and math.isnan(value))


def mmbench_choices(doc: Mapping[str, Any]) -> dict[str, str]:
    """The options A-D that are present (``build_choices``; E is never a choice here).

    A column absent from the row reads as the string "nan" (``doc.get(c, "nan")`` in
    ``mmbench_process_results``) and so, like a literal "nan", counts as present: the
    dataset's rows always carry A-D, with None for a missing option.
    """
    values = {ch: doc.get(ch, "nan") for ch in "ABCD"}
    return {ch: v for ch, v in values.items() if not _is_missing(v)}


def can_infer_option(answer: str, num_choice: int = 5) -> str | None:
    """The letter of an answer that names exactly one of A-E as a token (``can_infer_option``).

    Tokens are whitespace-separated. First a bare letter token ("B", "so B"), unless "A" is
    a token of an answer of more than 3 tokens (then "A" may be the article, and this step
    is skipped); then exactly one of the decorated forms "X." "X," "X:" "X)" "X)." "(X)"
    "(X)." ":X" ":X," ":X." ":X)" ":X).".
    """
    letters = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return None
    tokens = [t.strip() for t in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(1 for c in letters if prefix + c + suffix in tokens)

    if count() == 1:
        article_risk = "A" in tokens and len(tokens) > 3
        if not article_risk:
            for ch in letters:
                if ch in tokens:
                    return ch
    for prefix, suffix in _INFER_TUPS:
        if count(prefix, suffix) == 1:
            for ch in letters:
                if prefix + ch + suffix in tokens:
                    return ch
    return None


def can_infer_text(answer: str, choices: Mapping[str, object]) -> str | None:
    """The letter whose option text is the only one contained in the answer (case-insensitive)."""
    low = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: Mapping[str, object]) -> str | None:
    """``can_infer``: the option rule, else the text rule, else None."""
    return can_infer_option(answer) or can_infer_text(answer, choices)


def mmbench_resolve(prediction: str, doc: Mapping[str, Any]) -> tuple[str, str]:
    """The letter one answer gives, and the rule that found it.

    ``("X", "prefetch")`` when :func:`can_infer` resolves it; otherwise the static fallback
    ``(extract_mcq_answer(prediction, sorted choices), "rule-based")``, where lmms-eval's
    default would have asked a GPT judge. The letter may be ``""`` (nothing found).
    """
    choices = mmbench_choices(doc)
    letter = can_infer(prediction, choices)
    if letter:
        return letter, "prefetch"
    return extract_mcq_answer(prediction, sorted(choices)), "rule-based"


def mmbench_sample(prediction: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """One MMBench row: its index, gold, category and the resolved letter (with its path)."""
    letter, path = mmbench_resolve(prediction, doc)
    l2 = doc.get("L2-category", doc.get("l2-category"))
    return {
        "index": int(doc["index"]),
        "answer": str(doc["answer"]),
        "category": doc.get("category"),
        "l2_category": l2,
        "prediction": prediction,
        "resolved": letter,
        "path": path,
        "correct": 1 if letter and letter == str(doc["answer"]) else 0,
    }


def mmbench_circular(samples: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Circular evaluation (``eval_sub_data`` with ``static_only=True``): for every original
    question (index < 1e6), 1 iff it and each rotated copy (index % 1e6 equal) resolve to
    their gold letter; copies whose original is absent are ignored, as in the reference.

    The reference stops early and resolves prefetch hits before static ones; the outcome is
    the same "all copies right" rule, so it is computed directly.
    """
    groups: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[int(s["index"]) % CIRCULAR_BASE].append(s)
    originals = sorted({int(s["index"]) for s in samples if int(s["index"]) < CIRCULAR_BASE})
    return {idx: int(all(s["correct"] for s in groups[idx])) for idx in originals}


def mmbench_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """``gpt_eval_score``: circular accuracy over the original questions, in percent (the
    reference returns ``overall_acc * 100``). The name is lmms-eval's; the judge here is rule-based."""
    if metric != "gpt_eval_score":
        raise KeyError(f"unknown MMBench metric {metric!r}")
    hits = mmbench_circular(samples)
    # fraction first, then * 100: the reference's order (overall_acc * 100), bit for bit
    return sum(hits.values()) / len(hits) * 100 if hits else 0.0


def mmbench_category_accuracy(samples: Sequence[Mapping[str, Any]], field: str = "category") -> dict[str, float]:
    """Circular accuracy (fraction) per ``category`` or ``l2_category`` of the original rows."""
    hits = mmbench_circular(samples)
    cat_of = {int(s["index"]): s.get(field) for s in samples}
    per: dict[str, list[int]] = defaultdict(list)
    for idx, hit in hits.items():
        per[str(cat_of[idx])].append(hit)
    return {k: sum(v) / len(v) for k, v in per.items()}
