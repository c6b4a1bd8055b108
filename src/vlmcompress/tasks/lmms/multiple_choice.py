"""Option-letter scoring of ScienceQA-IMG, AI2D, RealWorldQA and MMStar.

References (lmms-eval 0.7.3):
* the shared letter extractor: ``tasks/_task_utils/mcq_extract.py::extract_mcq_answer``
  (RealWorldQA, MMStar, and MMBench's static fallback);
* ScienceQA: ``tasks/scienceqa/utils.py::sqa_process_results``;
* AI2D: ``tasks/ai2d/utils.py::MultiChoiceRegexFilter`` then the YAML's ``exact_match``
  (``ignore_case``, ``ignore_punctuation``);
* RealWorldQA: ``tasks/realworldqa/utils.py::realworldqa_process_results``;
* MMStar: ``tasks/mmstar/utils.py`` (``exact_match`` and ``mmstar_aggregate_results``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .vqa import exact_match

DEFAULT_CHOICES: tuple[str, ...] = tuple("ABCDEFGH")

# Phrases after which the first choice letter is taken (lmms-eval's list, incl. ko/zh/ja).
ANSWER_PHRASES: tuple[str, ...] = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)

# Format -> priority; the highest-priority format wins, then the latest position.
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2, "fallback": 0}
_EDGE_PUNCT = (",", ".", "!", "?", ";", ":", "'", '"')


def extract_mcq_answer(response: str, choices: Sequence[str] | None = None) -> str:
    """The option letter a free-form answer gives, or ``""``.

    Candidates, each with a format and a position in the edge-trimmed, space-padded text:
    ``(X)``, ``X.``, ``X:``, ``X)``, ``"X "`` (last occurrence each), the first ``X`` after
    each answer phrase, a standalone letter at the very start or the very end, and, only if
    none of these, any occurrence. The winner has the highest format priority
    (start > end > phrase > parentheses > period > colon > right_paren > space > fallback),
    ties going to the later position. Letters are matched case-sensitively.
    An empty ``choices`` falls back to A..H, as the reference's ``choices or default``.
    """
    if not response or not response.strip():
        return ""
    letters = list(choices) if choices else list(DEFAULT_CHOICES)
    text = response.strip()
    for ch in _EDGE_PUNCT:  # one mark at a time, as the reference (".," keeps its ".")
        text = text.strip(ch)
    text = f" {text} "

    cands: list[tuple[str, int, str]] = []
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} ")):
        for ch in letters:
            token = pattern.format(ch)
            if token in text:
                cands.append((ch, text.rfind(token), fmt))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        idx = lowered.find(phrase)
        if idx != -1:
            for ch in letters:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    cands.append((ch, pos, "phrase"))
    core = text.strip()
    for ch in letters:
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            cands.append((ch, 0, "start"))
    for ch in letters:
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            cands.append((ch, len(text) - 1, "end"))
    if not cands:
        cands = [(ch, text.rfind(ch), "fallback") for ch in letters if ch in text]
    if not cands:
        return ""
    # max() keeps the first of equal keys; the reference's stable reverse sort does too
    return max(cands, key=lambda c: (_PRIORITY[c[2]], c[1]))[0]


def option_letters(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` options."""
    return [chr(ord("A") + i) for i in range(n)]


def scienceqa_correct(prediction: str, target_letter: str) -> float:
    """ScienceQA (LLaVA's rule): right if the stripped answer equals the letter
    case-insensitively, or starts with an upper-case letter followed by ``.`` (``"B. dog"``)
    whose lower-case equals the target; nothing else ("(B)", "b. dog") counts."""
    target = target_letter.strip().lower()
    pred = prediction.strip()
    if pred.lower() == target:
        return 1.0
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return 1.0 if pred[0].lower() == target else 0.0
    return 0.0


_AI2D_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def ai2d_filter(raw_response: str) -> str:
    """AI2D's ``flexible-extract`` filter: the letter of a leading ``"X."``, else the response.

    In lmms-eval filters run on the raw generation, *before* reasoning blocks are stripped.
    """
    m = _AI2D_LEADING_LETTER.match(raw_response)
    return m.group(1) if m else raw_response


def ai2d_correct(filtered_prediction: str, target: str) -> float:
    """AI2D's YAML metric: ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``,
    so "(B)" and "b" match "B" while "B) cat" does not."""
    return exact_match(filtered_prediction, target, ignore_case=True, ignore_punctuation=True)


def realworldqa_correct(prediction: str, answer: str) -> float:
    """RealWorldQA: a gold A-D is compared with :func:`extract_mcq_answer` over A-D; any other
    gold (numbers, words) with the answer lower-cased, stripped and trailing periods removed."""
    gt = answer.strip()
    if gt.upper() in ("A", "B", "C", "D"):
        return 1.0 if extract_mcq_answer(prediction, ["A", "B", "C", "D"]) == gt.upper() else 0.0
    return 1.0 if prediction.lower().strip().rstrip(".") == gt.lower() else 0.0


# --------------------------------------------------------------------------------------
# MMStar
# --------------------------------------------------------------------------------------

#: MMStar's six categories and their 18 sub-categories (``l2_category``).
MMSTAR_CATEGORIES: dict[str, tuple[str, ...]] = {
    "coarse perception": ("image scene and topic", "image style & quality", "image emotion"),
    "fine-grained perception": ("object counting", "recognition", "localization"),
    "instance reasoning": ("single-instance reasoning", "cross-instance attribute reasoning", "cross-instance relation reasoning"),
    "logical reasoning": ("code & sequence reasoning", "diagram reasoning", "common reasoning"),
    "science & technology": (
        "biology & chemistry & physics",
        "electronics & energy & mechanical eng.",
        "geography & earth science & agriculture",
    ),
    "math": ("geometry", "numeric commonsense and calculation", "statistical reasoning"),
}


def mmstar_correct(prediction: str, answer: str) -> float:
    """MMStar: :func:`extract_mcq_answer` over A-D equals the stripped, upper-cased gold."""
    return 1.0 if extract_mcq_answer(prediction, ["A", "B", "C", "D"]) == answer.strip().upper() else 0.0


def mmstar_macro_mean(samples: Sequence[Mapping[str, Any]]) -> float:
    """Mean over the sub-categories (``l2_category``) present of each one's mean score.

    Every MMStar metric aggregates this way: a category metric over its own samples (so over
    its 3 sub-categories), ``average`` over all samples (so over the 18).
    """
    by_l2: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        by_l2[s["l2_category"]].append(float(s["score"]))
    if not by_l2:
        return 0.0
    return sum(sum(v) / len(v) for v in by_l2.values()) / len(by_l2)
