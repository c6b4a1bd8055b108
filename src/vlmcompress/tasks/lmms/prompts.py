"""Prompt text of each task with lmms-eval's ``default`` ``lmms_eval_specific_kwargs``.

Each function reproduces the task's ``doc_to_text`` (file named in its docstring, lmms-eval
0.7.3 ``lmms_eval/tasks/...``) for the default model entry; model-specific entries (qwen_vl,
gpt4v, ...) are not reproduced. Images are not touched here: the spec names their columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .mmbench import _is_missing
from .mmmu import parse_options_field

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
# vizwiz_vqa's default post-prompt (lmms_eval/tasks/vizwiz_vqa/_default_template_vqa_yaml)
VIZWIZ_POST = "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


def plain_prompt(pre: str, post: str, *, strip: bool = False, capitalize: bool = False):
    """``f"{pre}{question}{post}"`` (POPE/OCRBench strip the question, TextVQA/VizWiz
    ``str.capitalize`` it: first letter up, *all others lower-cased*)."""

    def doc_to_text(doc: Mapping[str, Any]) -> str:
        q = str(doc["question"])
        if strip:
            q = q.strip()
        if capitalize:
            q = q.capitalize()
        return f"{pre}{q}{post}"

    return doc_to_text


MME_REPLACE = " Please answer yes or no."


def mme_doc_to_text(doc: Mapping[str, Any], pre: str = "", post: str = SHORT_ANSWER) -> str:
    """``mme/utils.py::mme_doc_to_text``: a non-empty pre/post prompt replaces the dataset's
    " Please answer yes or no." (removed, then the prompt added)."""
    q = str(doc["question"]).strip()
    if pre:
        q = pre + q.replace(MME_REPLACE, "")
    if post:
        q = q.replace(MME_REPLACE, "") + post
    return q


def scienceqa_doc_to_text(doc: Mapping[str, Any], pre: str = "", post: str = LETTER_ANSWER) -> str:
    """``scienceqa/utils.py::sqa_doc_to_text`` (format "default"): optional
    ``"Context: {hint}\\n"``, the question, ``"A. choice"`` lines, the post prompt."""
    choices = list(doc["choices"])
    lines = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    hint = doc["hint"]
    # a falsy hint is formatted as-is, as the reference does ("" adds nothing; None would
    # print "None", which the dataset, using "", never triggers)
    context = f"Context: {hint}\n" if hint else hint
    return f"{pre}{context}{doc['question']}\n{lines}{post}"


def ai2d_doc_to_text(doc: Mapping[str, Any], pre: str = "", post: str = LETTER_ANSWER) -> str:
    """``ai2d/utils.py::ai2d_doc_to_text`` (prompt_format "mcq")."""
    lines = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(doc["options"]))
    return f"{pre}{doc['question']}\n{lines}{post}"


MMBENCH_SYS_PROMPT = "There are several options:"


def mmbench_options_prompt(doc: Mapping[str, Any]) -> str:
    """``MMBench_Evaluator.create_options_prompt`` over A-E: truthy options in letter order,
    skipping NaN and the string "nan", under "There are several options:"."""
    lines = [MMBENCH_SYS_PROMPT]
    for key in sorted(k for k in "ABCDE" if doc.get(k)):
        value = doc[key]
        if not _is_missing(value) and value != "nan":
            lines.append(f"{key}. {value}")
    return "\n".join(lines)


def mmbench_doc_to_text(doc: Mapping[str, Any], post: str = "Answer with the option's letter from the given choices directly.") -> str:
    """``mmbench/en_utils.py::mmbench_doc_to_text``: ``"{hint} {question} {options}"`` (hint
    dropped when missing or "nan"), a newline, the post prompt."""
    hint = doc.get("hint")
    options = mmbench_options_prompt(doc)
    if not _is_missing(hint) and hint != "nan":
        query = f"{hint} {doc['question']} {options}"
    else:
        query = f"{doc['question']} {options}"
    return f"{query}\n{post}"


MMMU_MC_PROMPT = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_PROMPT = "Answer the question using a single word or phrase."


def mmmu_doc_to_text(doc: Mapping[str, Any]) -> str:
    """``mmmu/utils.py::construct_prompt`` with the default prompts: multiple choice gets
    ``"\\nA. opt..."`` then a blank line and the letter instruction; open gets a blank line
    and the short-answer instruction. ``<image N>`` placeholders stay in the text (lmms-eval's
    ``interleaved_format: false``; its chat path swaps them for ``<image>``)."""
    q = doc["question"]
    if doc["question_type"] == "multiple-choice":
        opts = parse_options_field(doc["options"])
        lines = "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(opts))
        return f"{q}\n{lines}\n\n{MMMU_MC_PROMPT}"
    return f"{q}\n\n{MMMU_OPEN_PROMPT}"


_MMMU_IMAGE_TOKEN = re.compile(r"<image \d+>")


def mmmu_image_columns(doc: Mapping[str, Any]) -> list[str]:
    """``mmmu_doc_to_visual``: the ``image_N`` columns named by ``<image N>`` in the prompt
    (question and options), unique, sorted by name."""
    tokens = _MMMU_IMAGE_TOKEN.findall(mmmu_doc_to_text(doc))
    return sorted({t.strip("<>").replace(" ", "_") for t in tokens})


MMSTAR_POST = "\nAnswer with the option's letter from the given choices directly"  # sic: no period


def mmstar_doc_to_text(doc: Mapping[str, Any]) -> str:
    """``mmstar/utils.py::mmstar_doc_to_text``: the question (it already lists the options),
    stripped, " Please answer yes or no." removed, the post prompt appended."""
    return str(doc["question"]).strip().replace(MME_REPLACE, "") + MMSTAR_POST


REALWORLDQA_REPLACE = "Please answer directly with only the letter of the correct option and nothing else."


def realworldqa_doc_to_text(doc: Mapping[str, Any], pre: str = "", post: str = "") -> str:
    """``realworldqa/utils.py::realworldqa_doc_to_text``: with the default (empty) post
    prompt the dataset's own instruction stays in the question."""
    q = str(doc["question"]).strip()
    if post:
        q = q.replace(REALWORLDQA_REPLACE, "")
    return f"{pre}{q}{post}"
