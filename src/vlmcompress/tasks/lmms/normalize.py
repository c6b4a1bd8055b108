"""Text normalisation shared by the lmms-eval scorers.

Two jobs:

* response cleaning: the reasoning blocks that lmms-eval's evaluator removes before any
  scorer sees a response (``lmms_eval/api/reasoning.py::strip_reasoning_tags`` with the CLI
  default ``--reasoning_tags '[["<think>", "</think>"], ["<analysis>", "</analysis>"]]'``),
  followed by the ``.strip()`` that ``ConfigurableTask.process_results`` applies to every
  ``generate_until`` result (``lmms_eval/api/task.py``);
* the EvalAI / VQA answer processor of ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``
  (itself MMF's port of the official VQA evaluation), in the two ways lmms-eval calls it:
  the whole processor (TextVQA, VizWiz) and only its punctuation + digit/article steps
  (``lmms_eval/tasks/vqav2/utils.py``).

Quirks of the reference are kept on purpose, because a score that differs from the one
people quote is worse than a tidier rule; each one is marked where it happens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# --------------------------------------------------------------------------------------
# Response cleaning
# --------------------------------------------------------------------------------------

#: lmms-eval 0.7.x's CLI default for ``--reasoning_tags`` (``lmms_eval/__main__.py``).
DEFAULT_REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning_blocks(text: str, tag_pairs: Sequence[tuple[str, str]] = DEFAULT_REASONING_TAGS) -> str:
    """Remove ``<think>…</think>``-style blocks, as ``strip_reasoning_tags`` does.

    Rules followed (``lmms_eval/api/reasoning.py``):
    * tags are matched case-sensitively;
    * every opening tag that has a closing tag after it loses everything up to and including
      that closing tag;
    * an opening tag with no closing tag after it is left alone (the text passes unchanged);
    * a closing tag with no opening tag anywhere (chat templates that pre-fill ``<think>``
      in the prompt) keeps only what follows the *last* closing tag;
    * the result is stripped of surrounding whitespace.
    """
    out = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in out and end_tag in out:
            start = out.find(start_tag)
            end = out.find(end_tag, start)
            if end == -1:
                # a closing tag exists only before the opening one: nothing more to cut
                break
            out = out[:start] + out[end + len(end_tag) :]
        if end_tag in out and start_tag not in out:
            out = out.rsplit(end_tag, 1)[-1]
    return out.strip()


def clean_response(text: str | None) -> str:
    """What every lmms-eval scorer receives: reasoning blocks gone, whitespace stripped.

    ``None`` becomes ``""`` as in ``ConfigurableTask.process_results``. Idempotent, so a
    caller that already cleaned a response may clean it again without changing it.
    """
    if text is None:
        return ""
    return strip_reasoning_blocks(text).strip()


# --------------------------------------------------------------------------------------
# EvalAI answer processor (VQA accuracy)
# --------------------------------------------------------------------------------------

# The official VQA contraction table, as pairs "without-apostrophe:with-apostrophe".
# Entries are kept exactly, including the reversed "somebody'd -> somebodyd" and the
# capitalised keys ("Im", "Ive", "Id've") that can never match lower-cased words: both are
# in the reference table, so removing them would change no score but fixing the reversed
# one would.
_CONTRACTION_PAIRS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(":", 1) for pair in _CONTRACTION_PAIRS.split())

#: Number words the VQA evaluation maps to digits ("none" counts as zero).
NUMBER_MAP: dict[str, str] = {
    "none": "0",
    **{w: str(i) for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])},
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
#: Punctuation handled one mark at a time, in the reference's order (order matters only
#: for which replacement runs first; every mark is handled the same way).
PUNCTUATIONS: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# A comma between two digits ("1,000"): its presence anywhere switches every mark to deletion.
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
# The reference writes ``(?!<=\d)(\.)(?!\d)``: the first group is a (mistyped) lookahead that
# can never match at a '.', so the rule is simply "a period not followed by a digit".
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The reference calls ``PERIOD_STRIP.sub("", text, re.UNICODE)``: the flag lands in the
# positional ``count`` argument, so at most int(re.UNICODE) == 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """EvalAI ``process_punctuation``.

    A mark is deleted when it touches a space in the *input* (``"x ,"``/``", x"``) or when the
    input holds a comma between digits anywhere; otherwise it becomes a space. Then periods
    not followed by a digit are deleted (at most 32, see above).
    """
    out = text
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATIONS:
        if delete_all or (mark + " " in text) or (" " + mark in text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """EvalAI ``process_digit_article``: lower-case words, number words to digits, articles
    dropped, then contractions restored (after the number map, as in the reference)."""
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def evalai_normalize(text: str) -> str:
    """The full EvalAI processor (``EvalAIAnswerProcessor.__call__``), used by TextVQA and VizWiz.

    Steps: lower-case; delete every ``,`` and ``?``; split ``'s`` off as ``" 's"``; strip;
    newlines/tabs to spaces; :func:`process_punctuation`; :func:`process_digit_article`.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqav2_normalize(text: str) -> str:
    """The VQAv2 path (``lmms_eval/tasks/vqav2/utils.py``): newlines/tabs to spaces, strip,
    then only :func:`process_punctuation` and :func:`process_digit_article`.

    Unlike :func:`evalai_normalize` there is no blanket ``,``/``?`` deletion and no ``'s``
    split, and the punctuation step sees the original case.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
