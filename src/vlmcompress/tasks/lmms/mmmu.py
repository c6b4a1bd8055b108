"""MMMU answer parsing and accuracy (the official MMMU ``eval_utils.py`` rules).

Reference: lmms-eval 0.7.3 ``tasks/mmmu/utils.py`` (``parse_open_response``,
``extract_numbers``, ``normalize_str``, ``eval_multi_choice``, ``eval_open``,
``evaluate_mmmu``, ``mmmu_aggregate_results``) and
``tasks/_task_utils/mmmu_mcq_utils.py::parse_mmmu_multi_choice_response``.

One deliberate difference: when a multiple-choice answer names no option, the reference
draws a letter from Python's global ``random`` (seeded once per lmms-eval run, so the draw
depends on document order). Here the draw comes from a generator seeded by the response and
the options, so one answer always gets the same letter, whatever else was scored.
"""

from __future__ import annotations

import ast
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

# --------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------


def multi_choice_info(options: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``({"A": option0, ...}, ["A", ...])`` for a list of options."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    return dict(zip(letters, options, strict=True)), letters


def parse_options_field(options: str | Sequence[str]) -> list[str]:
    """MMMU stores ``options`` as the ``repr`` of a list; read it safely."""
    if isinstance(options, str):
        return list(ast.literal_eval(options))
    return list(options)


def _fallback_rng(response: str, all_choices: Sequence[str]) -> random.Random:
    return random.Random(zlib.crc32(("\x1f".join([response, *all_choices])).encode("utf-8")))


def parse_multi_choice_response(
    response: str,
    all_choices: Sequence[str],
    index2ans: Mapping[str, str],
    rng: random.Random | None = None,
) -> str:
    """The option letter of an MMMU multiple-choice answer.

    After trimming ``, . ! ? ; : '`` from both ends (one mark at a time) and padding with
    spaces, candidates are, in this order of precedence: letters in parentheses "(B)"; else
    letters followed by a space "B "; else letters followed by a period "B."; else, for
    answers of more than 5 words, options whose text appears in the answer. Several
    candidates: the one appearing last wins (by "(X)", " X ", or option text). None: a
    random letter (from ``rng``, by default one seeded by the response, see module doc).
    """
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = f" {response} "

    by_letter = True
    bracketed = False
    candidates: list[str] = []
    for c in all_choices:
        if f"({c})" in response:
            candidates.append(c)
            bracketed = True
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        low = response.lower()
        candidates = [k for k, ans in index2ans.items() if ans.lower() in low]
        by_letter = not candidates

    if not candidates:
        return (rng or _fallback_rng(response, all_choices)).choice(list(all_choices))
    if len(candidates) == 1:
        return candidates[0]
    if by_letter:
        positions = [response.rfind(f"({c})") if bracketed else response.rfind(f" {c} ") for c in candidates]
    else:
        low = response.lower()
        positions = [low.rfind(index2ans[c].lower()) for c in candidates]
    # np.argmax: the first of equal maxima
    return candidates[positions.index(max(positions))]


def eval_multi_choice(gold: str | Sequence[str], pred: str) -> bool:
    """Exact equality with the gold letter (or with any of a list of golds)."""
    if isinstance(gold, list):
        return any(g == pred for g in gold)
    return gold == pred


# --------------------------------------------------------------------------------------
# Open answers
# --------------------------------------------------------------------------------------

_NUM_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """Every number in the text: comma-grouped, then scientific, then plain (official order;
    a plain match may be a fragment of a comma-grouped one, e.g. "000" of "3,000")."""
    return _NUM_WITH_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list[str | float]:
    """A number becomes ``[round(float, 2)]`` (commas dropped); text becomes ``[lower]``, and
    a single character ``[" x", "x "]`` so it cannot match inside a word."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def _key_subresponses(response: str) -> list[str]:
    text = response.strip().strip(".").lower()
    # The official split also breaks at ". " before a capital, but the text is already
    # lower-cased, so in effect only newlines split it.
    parts = re.split(r"\.\s(?=[A-Z])|\n", text)
    keys: list[str] = []
    for i, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (("=",) if i == len(parts) - 1 else ())
        shortest: str | None = None
        for ind in indicators:
            if ind in part:
                tail = part.split(ind)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [text]


def parse_open_response(response: str) -> list[str | float]:
    """Candidate answers of an open MMMU answer: the tail after the last key phrase ("is ",
    "so ", "answer ", "=" on the last line, ...) of each line, the numbers in those tails, all
    passed through :func:`normalize_str`, duplicates removed."""
    keys = _key_subresponses(response)
    raw: list[str] = list(keys)
    for k in keys:
        raw.extend(extract_numbers(k))
    out: list[str | float] = []
    for r in raw:
        out.extend(normalize_str(r))
    # list(set(...)) in the reference; order does not change the outcome, so keep first-seen order
    return list(dict.fromkeys(out))


def eval_open(gold: str | Sequence[str], preds: Sequence[str | float]) -> bool:
    """Right if a text candidate contains a normalised gold text, or a number candidate equals
    a normalised gold number."""
    golds: list[str | float] = []
    if isinstance(gold, list):
        for g in gold:
            golds.extend(normalize_str(g))
    else:
        golds = normalize_str(gold)  # type: ignore[arg-type]
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False


# --------------------------------------------------------------------------------------
# Per document and aggregate
# --------------------------------------------------------------------------------------


def subdomain_of(doc_id: str) -> str:
    """``"validation_Art_Theory_12"`` -> ``"Art_Theory"``."""
    split = doc_id.split("_")[0]
    m = re.search(rf"^{re.escape(split)}_(.+?)_\d+$", doc_id)
    if not m:
        raise ValueError(f"cannot read the MMMU subject from id {doc_id!r}")
    return m.group(1)


def mmmu_sample(prediction: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Parse one answer by its question type and judge it; returns
    ``{"id", "subdomain", "question_type", "answer", "parsed_pred", "correct"}``."""
    if doc["question_type"] == "multiple-choice":
        index2ans, letters = multi_choice_info(parse_options_field(doc["options"]))
        parsed: Any = parse_multi_choice_response(prediction, letters, index2ans)
        correct = eval_multi_choice(doc["answer"], parsed)
    else:
        parsed = parse_open_response(prediction)
        correct = eval_open(doc["answer"], parsed)
    return {
        "id": doc["id"],
        "subdomain": subdomain_of(str(doc["id"])),
        "question_type": doc["question_type"],
        "answer": doc["answer"],
        "parsed_pred": parsed,
        "correct": int(correct),
    }


def mmmu_subject_accuracy(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{subject: {"acc", "num"}}`` (unrounded)."""
    per: dict[str, list[int]] = defaultdict(list)
    for s in samples:
        per[s["subdomain"]].append(int(s["correct"]))
    return {k: {"acc": sum(v) / len(v), "num": len(v)} for k, v in per.items()}


def mmmu_aggregate(metric: str, samples: Sequence[Mapping[str, Any]]) -> float:
    """``mmmu_acc``: instance-level accuracy, computed as the reference does (per-subject
    accuracy weighted by its size) and rounded to 5 decimals."""
    if metric != "mmmu_acc":
        raise KeyError(f"unknown MMMU metric {metric!r}")
    subjects = mmmu_subject_accuracy(samples)
    n = sum(s["num"] for s in subjects.values())
    if n == 0:
        return 0.0
    return round(sum(s["acc"] * s["num"] for s in subjects.values()) / n, 5)
