"""The lmms-eval scoring layer against values derived by hand from the official rules.

Each expected value is worked out in the comment above it from the rule the scorer follows
(lmms-eval 0.7.3 files named in the modules' docstrings); none was produced by running the
scorer. lmms-eval is not imported.
"""

from __future__ import annotations

import math
import random

import pytest

from vlmcompress.tasks.lmms import LMMS_TASK_SPECS, Column, aggregate_all, column_value_ok
from vlmcompress.tasks.lmms.mmbench import can_infer_option, mmbench_aggregate, mmbench_resolve
from vlmcompress.tasks.lmms.mmmu import (
    eval_open,
    mmmu_aggregate,
    parse_multi_choice_response,
    parse_open_response,
    subdomain_of,
)
from vlmcompress.tasks.lmms.multiple_choice import extract_mcq_answer
from vlmcompress.tasks.lmms.normalize import clean_response, evalai_normalize, vqav2_normalize
from vlmcompress.tasks.lmms.ocrbench import ocrbench_category_counts
from vlmcompress.tasks.lmms.vqa import anls, exact_match, relaxed_accuracy, vqa_accuracy
from vlmcompress.tasks.lmms.yesno import mme_category_scores, mme_parse

S = LMMS_TASK_SPECS


def run(task: str, pairs: list[tuple[dict, str]]) -> tuple[list[dict], dict[str, float]]:
    """process_results over (doc, response) pairs, then every metric aggregated."""
    per = [S[task].process_results(doc, resp) for doc, resp in pairs]
    return per, aggregate_all(S[task], per)


# --------------------------------------------------------------------------------------
# Response cleaning
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<think>The dog is big.</think>\n Yes ", "Yes"),  # block removed, then stripped
        ("<analysis>a</analysis>No", "No"),  # the second default tag pair
        ("<think>a</think>mid<think>b</think>end", "midend"),  # every block
        ("<think>unfinished", "<think>unfinished"),  # unclosed opening tag: left alone
        ("reasoning here</think> B", "B"),  # orphan closing tag: keep what follows it
        ("<THINK>x</THINK>y", "<THINK>x</THINK>y"),  # case-sensitive tags
        ("  plain  ", "plain"),
        (None, ""),
    ],
)
def test_clean_response(raw, clean):
    assert clean_response(raw) == clean


def test_scorers_see_cleaned_text():
    # POPE compares the whole answer: with the think block left in, "…</think>yes" != "yes"
    (r,), _ = run("pope", [({"question": "q", "answer": "yes", "question_id": 1}, "<think>no?</think> yes")])
    assert r["pope_accuracy"]["score"] == 1.0


# --------------------------------------------------------------------------------------
# EvalAI normalisation and VQA accuracy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "evalai", "vqav2"),
    [
        # lower, "two" -> "2", article "the" dropped (both paths)
        ("The Two dogs", "2 dogs", "2 dogs"),
        # contraction restored after lower-casing
        ("Dont", "don't", "don't"),
        # "none" is a number word (0)
        ("none", "0", "0"),
        # evalai: "'s" split off -> "it 's", final period stripped, "a" dropped;
        # vqav2: no split, "it's" is kept whole
        ("It's a cat.", "it 's cat", "it's cat"),
        # a period before a digit stays
        ("3.5", "3.5", "3.5"),
        # evalai deletes every comma first; vqav2: a comma between digits deletes all marks
        ("1,000", "1000", "1000"),
        # evalai deletes ","; vqav2 turns a mark that touches no space into a space
        ("red,blue", "redblue", "red blue"),
        # "-" touching no space becomes a space; with a space beside it, it is deleted
        ("t-shirt", "t shirt", "t shirt"),
        ("t - shirt", "t shirt", "t shirt"),
        # evalai deletes "?" outright; vqav2 turns "?" (no space beside) into a space
        ("yes?no", "yesno", "yes no"),
    ],
)
def test_answer_normalisation(text, evalai, vqav2):
    assert evalai_normalize(text) == evalai
    assert vqav2_normalize(text) == vqav2


def test_vqa_accuracy_ten_choose_nine_with_duplicates():
    # gold after normalisation: "2" x3 ("2","2","two"), "3" x7 ("three")
    answers = ["2", "2", "two"] + ["three"] * 7
    # pred "Two" -> "2". Leaving out a "2": 2 of the other 9 match -> min(1, 2/3) = 2/3;
    # leaving out a "3": 3 match -> 1. Mean = (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("Two", answers) == pytest.approx(0.9)
    # pred "3": every leave-one-out keeps >= 6 matches -> 1.0
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("four", answers) == 0.0
    # one "cat" among nine "dog": leaving out the cat -> 0 matches; leaving out a dog -> 1/3
    # mean = 9 * (1/3) / 10 = 0.3; the article of "a cat" is dropped first
    one = ["cat"] + ["dog"] * 9
    assert vqa_accuracy("a cat", one) == pytest.approx(0.3)
    assert vqa_accuracy("x", []) == 0.0


def test_vqa_variants_differ_and_vqav2_dicts():
    def dicts(values):
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(values)]

    gold = dicts(["red blue"] * 4 + ["green"] * 6)
    # vqav2: "red,blue" -> "red blue"; leave-one-out keeps >= 3 matches everywhere -> 1.0
    assert vqa_accuracy("red,blue", gold, "vqav2") == 1.0
    # evalai: "red,blue" -> "redblue", matches nothing -> 0.0
    assert vqa_accuracy("red,blue", ["red blue"] * 4 + ["green"] * 6, "evalai") == 0.0
    # vqav2 keeps "man's" whole: 3 golds "man's", 7 "woman"; leaving out a "man's" -> 2/3,
    # leaving out a "woman" -> 1; mean (3 * 2/3 + 7) / 10 = 0.9
    assert vqa_accuracy("man's", dicts(["man's"] * 3 + ["woman"] * 7), "vqav2") == pytest.approx(0.9)
    # the reference leaves out every dict *equal* to the current one: without answer_id the
    # four identical "yes" dicts all go at once -> a "yes" scores 0, a "no" scores 4/3 -> 1;
    # mean = 6 / 10 (plain leave-one-out would give 1.0)
    same = [{"answer": "yes"}] * 4 + [{"answer": "no"}] * 6
    assert vqa_accuracy("yes", same, "vqav2") == pytest.approx(0.6)
    with pytest.raises(ValueError):
        vqa_accuracy("x", ["x"], "bogus")  # type: ignore[arg-type]


def test_textvqa_vizwiz_prompt_capitalizes():
    doc = {"question": "what is the BRAND name?", "answers": ["x"], "question_id": 1}
    # str.capitalize lower-cases every letter after the first
    assert S["textvqa_val"].doc_to_text(doc) == "What is the brand name?\nAnswer the question using a single word or phrase."
    assert S["vizwiz_vqa_val"].doc_to_text(doc).startswith("What is the brand name?\nWhen the provided information is insufficient")
    # VQAv2 does not capitalize
    assert S["vqav2_val"].doc_to_text(doc).startswith("what is the BRAND name?")


# --------------------------------------------------------------------------------------
# ANLS
# --------------------------------------------------------------------------------------


def test_anls_rules():
    # whitespace collapsed and case folded: identical -> 1.0
    assert anls("Hello World", ["hello  world"]) == 1.0
    # "abcd" vs "abxy": distance 2 over length 4 -> 1 - 0.5 = 0.5, exactly the threshold: kept
    assert anls("abxy", ["abcd"]) == 0.5
    # 11 characters, 5 edits -> 1 - 5/11 = 6/11 = 0.5454..: kept
    assert anls("abcdefxxxxx", ["abcdefghijk"]) == pytest.approx(6 / 11)
    # 11 characters, 6 edits -> 1 - 6/11 = 0.4545..: below 0.5, set to 0
    assert anls("abcdexxxxxx", ["abcdefghijk"]) == 0.0
    # best gold answer counts: "zzzz" gives 0, "abcd" gives 0.5
    assert anls("abxy", ["zzzz", "abcd"]) == 0.5
    # divisor from the raw strings: "ab   xy" normalises to "ab xy" (3 edits from "abcd")
    # but the divisor is len("ab   xy") = 7 -> 1 - 3/7 = 4/7 (with 5 it would be 0.4 -> 0)
    assert anls("ab   xy", ["abcd"]) == pytest.approx(4 / 7)
    assert anls("abxy", ["abcd"], threshold=0.6) == 0.0


# --------------------------------------------------------------------------------------
# ChartQA relaxed accuracy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "score"),
    [
        ("105", "100", 1.0),  # |105-100|/100 = 0.05: inclusive edge
        ("95", "100", 1.0),
        ("105.1", "100", 0.0),  # 0.051 > 0.05
        ("-3.1", "-3", 1.0),  # negative target: |-3.1 + 3| / |-3| = 0.033
        ("-3.3", "-3", 0.0),  # 0.3/3 = 0.1
        ("0", "0", 1.0),  # zero target: string comparison
        ("0.0", "0", 0.0),  # zero target: "0.0" != "0" as strings
        ("0.52", "50%", 1.0),  # "50%" -> 0.5; |0.52-0.5|/0.5 = 0.04
        ("52%", "50%", 1.0),  # 0.52 vs 0.5
        ("52", "50%", 0.0),  # 52 vs 0.5
        ("Yes", "yes", 1.0),  # text: case-insensitive equality
        ("yes.", "yes", 0.0),  # no punctuation stripping
        ("1,000", "1000", 0.0),  # float("1,000") fails -> string comparison
    ],
)
def test_relaxed_accuracy(pred, target, score):
    assert relaxed_accuracy(pred, target) == score


def test_chartqa_splits():
    docs = [
        ({"question": "q", "answer": "12", "type": "human_test"}, "12.5"),  # 0.5/12 = 0.042: right
        ({"question": "q", "answer": "Red", "type": "augmented_test"}, "blue"),  # wrong
        ({"question": "q", "answer": "7", "type": "augmented_test"}, "7"),  # right
    ]
    per, agg = run("chartqa", docs)
    assert "relaxed_augmented_split" not in per[0] and "relaxed_human_split" not in per[1]
    # overall 2/3; human split 1/1; augmented split 1/2
    assert agg == pytest.approx({"relaxed_overall": 2 / 3, "relaxed_human_split": 1.0, "relaxed_augmented_split": 0.5})


# --------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------


def test_pope_metrics():
    rows = [
        ("yes", "yes"),  # right, TP
        ("Yes", "yes"),  # lower-cased: right, TP
        ("yes.", "yes"),  # "yes." != "yes": wrong, and neither TP nor FN
        ("no", "yes"),  # wrong, FN
        ("NO", "yes"),  # wrong, FN
        (" No ", "no"),  # right (TN)
        ("yes", "no"),  # wrong, FP
        ("maybe", "no"),  # wrong
        ("<think>yes?</think>no", "no"),  # cleaned to "no": right (TN)
    ]
    _, m = run("pope", [({"question": "q", "answer": g, "question_id": i}, p) for i, (p, g) in enumerate(rows)])
    # accuracy 4/9; precision TP/(TP+FP) = 2/3; recall TP/(TP+FN) = 2/4;
    # F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7; yes ratio = gold "yes" share = 5/9
    # (the share of predicted "yes" would be 3/9)
    assert m["pope_accuracy"] == pytest.approx(4 / 9)
    assert m["pope_precision"] == pytest.approx(2 / 3)
    assert m["pope_recall"] == pytest.approx(1 / 2)
    assert m["pope_f1_score"] == pytest.approx(4 / 7)
    assert m["pope_yes_ratio"] == pytest.approx(5 / 9)
    assert S["pope"].primary_metric == "pope_f1_score"


# --------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ("Yes.", "yes"),  # periods removed
        ("yes, there is", "yes"),  # "yes" in the first 4 characters
        ("Nope", "no"),  # "no" in "nope"
        ("not sure", "no"),  # "no" in "not "
        ("The answer is yes", "other"),  # yes/no beyond the first 4 characters
        ("y", "yes"),
        ("n", "no"),
        ("x", "other"),
    ],
)
def test_mme_parser(pred, label):
    assert mme_parse(pred) == label


def test_mme_pairs_and_totals():
    def doc(cat, img, gt):
        return {"question": "Q? Please answer yes or no.", "answer": gt, "category": cat, "question_id": f"{cat}/{img}.png"}

    pairs = [
        # existence image 1: both right -> acc 100, acc+ 100
        (doc("existence", 1, "Yes"), "Yes"),
        (doc("existence", 1, "No"), "No."),
        # existence image 2: yes right, "There is no dog" -> head "ther" -> other: wrong
        # -> acc 50, acc+ 0
        (doc("existence", 2, "Yes"), "yes, there is"),
        (doc("existence", 2, "No"), "There is no dog"),
        # count image 3: "No" to a yes question wrong, "n" right -> acc 50, acc+ 0
        (doc("count", 3, "Yes"), "No"),
        (doc("count", 3, "No"), "n"),
        # code_reasoning (cognition): "y" right, "not sure" -> no, right -> 100 + 100
        (doc("code_reasoning", 4, "Yes"), "y"),
        (doc("code_reasoning", 4, "No"), "not sure"),
    ]
    per, m = run("mme", pairs)
    # existence: acc (100+50)/2 = 75, acc+ (100+0)/2 = 50 -> 125; count: 50 + 0 = 50
    cats = mme_category_scores([r["mme_perception_score"] for r in per if "mme_perception_score" in r])
    assert cats["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert cats["count"]["score"] == 50.0
    # perception = 125 + 50; cognition = 200
    assert m == {"mme_perception_score": 175.0, "mme_cognition_score": 200.0}
    # an image with one question cannot be scored
    with pytest.raises(ValueError):
        S["mme"].aggregate("mme_perception_score", [per[0]["mme_perception_score"]])


def test_mme_prompt_replaces_instruction():
    d = {"question": "Is this a cat? Please answer yes or no.", "answer": "Yes", "category": "existence", "question_id": "x"}
    assert S["mme"].doc_to_text(d) == "Is this a cat?\nAnswer the question using a single word or phrase."


# --------------------------------------------------------------------------------------
# OCRBench
# --------------------------------------------------------------------------------------


def test_ocrbench_categories_and_totals():
    hme = "Handwritten Mathematical Expression Recognition"
    rows = [
        # HME: case-sensitive, spaces removed: "X^{2}+1" does not contain "x^{2}+1" -> 0
        ("HME100k", hme, ["x^{2}+1"], "X ^ { 2 } + 1"),
        # HME: newlines -> spaces -> removed: "Theanswer:x^{2}+1" contains it -> 1
        ("HME100k", hme, ["x^{2}+1"], "The answer:\nx ^ {2}\n+ 1"),
        # others: lower-cased substring -> 1
        ("IIIT5K", "Regular Text Recognition", ["Hello"], "It says HELLO world"),
        # full-width letters folded to ASCII -> 1
        ("WordArt", "Artistic Text Recognition", ["HELLO"], "ＨＥＬＬＯ"),
        # newline in the gold becomes a space -> 1
        ("docVQA", "Doc-oriented VQA", ["two\nlines"], "two lines"),
        # any gold answer -> 1
        ("textVQA", "Scene Text-centric VQA", ["cat", "kitten"], "a kitten"),
        # outside HME spaces are kept: "d o g" does not contain "dog" -> 0
        ("FUNSD", "Key Information Extraction", ["dog"], "d o g"),
    ]
    docs = [({"dataset": d, "question_type": t, "answer": a, "question": "q"}, p) for d, t, a, p in rows]
    per, m = run("ocrbench", docs)
    assert [r["ocrbench_accuracy"]["score"] for r in per] == [0, 1, 1, 1, 1, 1, 0]
    # 5 right: lmms-eval divides by a fixed 1000; the per-document mean is 5/7
    assert m["ocrbench_accuracy"] == pytest.approx(0.005)
    assert m["ocrbench_doc_mean"] == pytest.approx(5 / 7)
    counts = ocrbench_category_counts([r["ocrbench_accuracy"] for r in per])
    # recognition = Regular (1) + Artistic (1); KIE 0; final 5
    assert counts[hme] == 1 and counts["Key Information Extraction"] == 0
    assert counts["Text Recognition"] == 2 and counts["Final Score"] == 5


# --------------------------------------------------------------------------------------
# Letter answers: ScienceQA, AI2D, RealWorldQA, the shared extractor
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "score"),
    [
        ("B", 1.0),
        ("b", 1.0),  # whole answer equal to the letter, any case
        ("B. dog", 1.0),  # capital letter + "."
        ("b. dog", 0.0),  # the "X." rule needs a capital
        ("(B)", 0.0),  # no other format counts
        ("The answer is B", 0.0),
        ("A", 0.0),
    ],
)
def test_scienceqa(pred, score):
    doc = {"question": "Which?", "choices": ["x", "y", "z"], "answer": 1, "hint": "", "image": None}
    assert S["scienceqa_img"].process_results(doc, pred)["exact_match"] == score


def test_scienceqa_prompt():
    doc = {"question": "Which?", "choices": ["x", "y"], "answer": 0, "hint": ""}
    post = "\nAnswer with the option's letter from the given choices directly."
    assert S["scienceqa_img"].doc_to_text(doc) == f"Which?\nA. x\nB. y{post}"
    assert S["scienceqa_img"].doc_to_text(dict(doc, hint="Ctx")) == f"Context: Ctx\nWhich?\nA. x\nB. y{post}"


@pytest.mark.parametrize(
    ("pred", "score"),
    [
        ("B. cat", 1.0),  # filter keeps the leading "B."'s letter
        ("  B.", 1.0),  # leading spaces allowed by the filter
        ("(B)", 1.0),  # exact_match drops punctuation: "(b)" -> "b"
        ("b", 1.0),  # ignore_case
        ("B) cat", 0.0),  # -> "b cat"
        ("The answer is B", 0.0),
        # the filter runs on the raw text (starts with "<think>": no match), then the block
        # is stripped: "B. cat" -> "b cat" != "b"
        ("<think>A</think>B. cat", 0.0),
    ],
)
def test_ai2d(pred, score):
    doc = {"question": "What?", "options": ["p", "q", "r"], "answer": "1"}
    assert S["ai2d"].doc_to_target(doc) == "B"
    assert S["ai2d"].process_results(doc, pred)["exact_match"] == score


def test_gqa_exact_match_options():
    def em(pred, gold):
        return S["gqa"].process_results({"question": "q", "answer": gold, "imageId": "1"}, pred)["exact_match"]

    assert em("Yes.", "yes") == 1.0  # case and punctuation ignored
    assert em("yes it is", "yes") == 0.0
    assert em("the cat", "cat") == 0.0  # articles are not removed
    assert exact_match("Left!", "left") == 0.0  # without the options nothing is ignored


@pytest.mark.parametrize(
    ("response", "choices", "letter"),
    [
        ("(B)", None, "B"),
        # ends with a standalone "C" ("end", priority 9); "I" is no choice among A-H
        ("I think it's C", None, "C"),
        # a standalone letter at the start (priority 10) beats the later explicit answer
        ("A cat sits left. Answer: C", ["A", "B", "C", "D"], "A"),
        # "the answer is" + first "B" after it (phrase) vs "B" at the end (end wins, same letter)
        ("The answer is B.", ["A", "B", "C", "D"], "B"),
        # nothing but the fallback: "D" occurs (in "Dog")
        ("Dog", ["A", "B", "C", "D"], "D"),
        ("", None, ""),
        ("no letter here", ["A", "B"], ""),
    ],
)
def test_extract_mcq_answer(response, choices, letter):
    assert extract_mcq_answer(response, choices) == letter


@pytest.mark.parametrize(
    ("gold", "pred", "score"),
    [
        ("B", "The answer is B.", 1.0),
        ("C", "A cat sits left. Answer: C", 0.0),  # extractor says A (see above)
        ("3", "3.", 1.0),  # open answers: trailing period removed
        ("Downhill", "downhill", 1.0),
        ("3", "three", 0.0),  # no number words
    ],
)
def test_realworldqa(gold, pred, score):
    assert S["realworldqa"].process_results({"question": "q", "answer": gold}, pred)["exact_match"] == score


# --------------------------------------------------------------------------------------
# MMStar
# --------------------------------------------------------------------------------------


def test_mmstar_macro_means():
    def doc(i, cat, l2):
        return {"index": i, "question": "q", "answer": "A", "category": cat, "l2_category": l2}

    fine, math_ = "fine-grained perception", "math"
    pairs = [
        (doc(0, fine, "object counting"), "A"),  # right
        (doc(1, fine, "object counting"), "B"),  # wrong
        (doc(2, fine, "object counting"), "nothing"),  # wrong ("" extracted)
        (doc(3, fine, "recognition"), "(A)"),  # right
        (doc(4, math_, "geometry"), "C"),  # wrong
    ]
    _, m = run("mmstar", pairs)
    # object counting 1/3, recognition 1, geometry 0
    # fine-grained = (1/3 + 1)/2 = 2/3; math = 0; average = (1/3 + 1 + 0)/3 = 4/9
    # (a micro mean would give 2/5)
    assert m == pytest.approx({fine: 2 / 3, math_: 0.0, "average": 4 / 9})


# --------------------------------------------------------------------------------------
# MMBench
# --------------------------------------------------------------------------------------


def _mmb(index, gold):
    return {
        "index": index,
        "question": "What is it?",
        "answer": gold,
        "hint": "nan",
        "A": "cat",
        "B": "dog",
        "C": "car",
        "D": None,
        "category": "c",
        "L2-category": "l",
        "source": "s",
        "split": "dev",
    }


def test_mmbench_circular_rule_based():
    pairs = [
        # question 1 and two rotations, all right
        (_mmb(1, "B"), "B"),  # bare letter token -> B
        (_mmb(1_000_001, "C"), "C. car"),  # "C." token -> C
        # "A" among > 3 tokens may be an article: the option rules skip it, no option text
        # matches, so the rule-based extractor decides: ends with "A" -> A
        (_mmb(2_000_001, "A"), "The answer is A"),
        # question 2: original right, rotation wrong -> the question counts 0
        (_mmb(2, "A"), "A"),
        (_mmb(1_000_002, "B"), "A"),
        # question 3: option text "dog" is the only one in the answer -> B, gold C: wrong
        (_mmb(3, "C"), "It is a dog"),
        # a rotation whose original is missing is ignored
        (_mmb(1_000_004, "A"), "A"),
    ]
    per, m = run("mmbench_en_dev", pairs)
    assert per[2]["gpt_eval_score"]["path"] == "rule-based"
    assert per[0]["gpt_eval_score"]["path"] == "prefetch"
    # 1 of the 3 original questions right on every copy -> 100/3
    assert m["gpt_eval_score"] == pytest.approx(100 / 3)
    assert S["mmbench_en_dev"].judge == "rule-based"
    # without circular grouping, per-row correctness would be 5/7
    assert mmbench_aggregate("gpt_eval_score", [r["gpt_eval_score"] for r in per[:3]]) == 100.0


def test_mmbench_option_rules_and_prompt():
    assert can_infer_option("A dog") == "A"  # 2 tokens: "A" is taken as the letter
    assert can_infer_option("I choose (C)") == "C"  # "(C)" form
    assert can_infer_option("B or C") is None  # two bare letters: ambiguous
    assert mmbench_resolve("It is a dog", _mmb(3, "C")) == ("B", "prefetch")
    # hint "nan" is dropped; option D (None) is not listed
    assert S["mmbench_en_dev"].doc_to_text(_mmb(1, "B")) == (
        "What is it? There are several options:\nA. cat\nB. dog\nC. car\nAnswer with the option's letter from the given choices directly."
    )


# --------------------------------------------------------------------------------------
# MMMU
# --------------------------------------------------------------------------------------

LETTERS = ["A", "B", "C", "D"]
INDEX2ANS = {"A": "cat", "B": "dog", "C": "car", "D": "3,000"}


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("(B)", "B"),  # option letter in parentheses
        ("B", "B"),  # " B " after padding
        # both "(A)" and "(C)" present: the one appearing last wins (not the first letter)
        ("(A) is wrong; the answer is (C).", "C"),
        # > 5 words, no letter form: the only option text found is "dog" -> B
        ("I would pick the dog because it barks", "B"),
    ],
)
def test_mmmu_multiple_choice_parsing(response, letter):
    assert parse_multi_choice_response(response, LETTERS, INDEX2ANS) == letter


def test_mmmu_no_option_draw_is_deterministic():
    a = parse_multi_choice_response("no idea", LETTERS, INDEX2ANS)
    assert a in LETTERS and all(parse_multi_choice_response("no idea", LETTERS, INDEX2ANS) == a for _ in range(5))
    # an explicit generator is used when given
    expected = random.Random(7).choice(LETTERS)
    assert parse_multi_choice_response("no idea", LETTERS, INDEX2ANS, rng=random.Random(7)) == expected


def test_mmmu_open_parsing():
    # "the result is 3,000": tail after "is " -> "3,000"; numbers found: "3,000" and its
    # fragment "000" -> {3000.0, 0.0}
    preds = parse_open_response("The result is 3,000.")
    assert set(preds) == {3000.0, 0.0}
    assert eval_open("3000", preds) and eval_open("3,000", preds)
    # "=" counts on the last line: tail "2.50" -> 2.5
    assert eval_open("2.5", parse_open_response("x = 2.50"))
    # text answers: the gold must be contained in a candidate
    assert eval_open("Paris", parse_open_response("The capital is Paris."))
    assert not eval_open("Lyon", parse_open_response("The capital is Paris."))


def test_mmmu_accuracy_and_prompt():
    def doc(i, subject, gold):
        return {
            "id": f"validation_{subject}_{i}",
            "question": "Q <image 1>?",
            "question_type": "multiple-choice",
            "options": "['p', 'q <image 2>']",
            "answer": gold,
        }

    pairs = [(doc(1, "Art", "A"), "(A)"), (doc(2, "Art", "A"), "(B)"), (doc(3, "Math", "B"), "B")]
    per, m = run("mmmu_val", pairs)
    # Art 1/2 (n=2), Math 1/1 (n=1): (0.5*2 + 1*1) / 3 = 0.666.. -> rounded to 5 decimals
    assert m["mmmu_acc"] == 0.66667
    assert mmmu_aggregate("mmmu_acc", [r["mmmu_acc"] for r in per[:1]]) == 1.0
    assert subdomain_of("validation_Art_Theory_12") == "Art_Theory"
    assert S["mmmu_val"].doc_to_text(pairs[0][0]) == (
        "Q <image 1>?\nA. p\nB. q <image 2>\n\nAnswer with the option's letter from the given choices directly."
    )
    assert S["mmmu_val"].images_of(pairs[0][0]) == ["image_1", "image_2"]


# --------------------------------------------------------------------------------------
# HallusionBench
# --------------------------------------------------------------------------------------


def test_hallusion_grouping():
    def doc(cat, sub, set_id, fig, qid, gt):
        return {
            "category": cat,
            "subcategory": sub,
            "set_id": set_id,
            "figure_id": fig,
            "question_id": qid,
            "gt_answer": gt,
            "question": "q",
        }

    pairs = [
        (doc("VD", "chart", 0, 0, 0, "1"), "Yes"),  # right
        (doc("VD", "chart", 0, 0, 1, "0"), "No"),  # right
        (doc("VD", "chart", 0, 1, 0, "0"), "yes"),  # wrong
        (doc("VD", "chart", 0, 1, 1, "1"), "no"),  # wrong
        (doc("VS", "map", 0, 0, 0, "1"), "yes"),  # right (VS figure 0: no figure)
        (doc("VS", "map", 0, 1, 0, "0"), "Yesterday it was no"),  # contains "yes" -> "1": wrong
        (doc("VS", "map", 1, 0, 0, "0"), "No"),  # right (no figure)
        (doc("VS", "map", 1, 1, 0, "1"), "I would say yes"),  # "yes" anywhere -> "1": right
    ]
    _, m = run("hallusion_bench_image", pairs)
    # aAcc: 5 of 8 right -> 62.5
    # fAcc, VS figure 0 left out: VD0/f0 right, VD0/f1 wrong, VS0/f1 wrong, VS1/f1 right -> 2/4
    #   (with the two no-figure groups counted it would be 4/6)
    # qAcc: VD0/q0 (f0 right, f1 wrong) wrong, VD0/q1 wrong, VS0/q0 wrong, VS1/q0 right -> 1/4
    assert m == {"aAcc": 62.5, "qAcc": 25.0, "fAcc": 50.0}
    assert S["hallusion_bench_image"].judge == "rule-based"


# --------------------------------------------------------------------------------------
# The specs as a whole
# --------------------------------------------------------------------------------------

EXPECTED = {
    # task: (dataset id, config, split, primary metric)
    "pope": ("lmms-lab-encoder/POPE", None, "test", "pope_f1_score"),
    "mme": ("lmms-lab-encoder/MME", None, "test", "mme_perception_score"),
    "textvqa_val": ("lmms-lab-encoder/textvqa", None, "validation", "exact_match"),
    "docvqa_val": ("lmms-lab-encoder/DocVQA", "DocVQA", "validation", "anls"),
    "infovqa_val": ("lmms-lab-encoder/DocVQA", "InfographicVQA", "validation", "anls"),
    "chartqa": ("lmms-lab-encoder/ChartQA", None, "test", "relaxed_overall"),
    "ocrbench": ("echo840/OCRBench", None, "test", "ocrbench_accuracy"),
    "vqav2_val": ("lmms-lab-encoder/VQAv2", None, "validation", "exact_match"),
    "vizwiz_vqa_val": ("lmms-lab-encoder/VizWiz-VQA", None, "val", "exact_match"),
    "gqa": ("lmms-lab-encoder/GQA", "testdev_balanced_instructions", "testdev", "exact_match"),
    "scienceqa_img": ("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test", "exact_match"),
    "ai2d": ("lmms-lab-encoder/ai2d", None, "test", "exact_match"),
    "mmbench_en_dev": ("lmms-lab-encoder/MMBench", "en", "dev", "gpt_eval_score"),
    "mmmu_val": ("lmms-lab-encoder/MMMU", None, "validation", "mmmu_acc"),
    "hallusion_bench_image": ("lmms-lab-encoder/HallusionBench", None, "image", "aAcc"),
    "realworldqa": ("lmms-lab-encoder/RealWorldQA", None, "test", "exact_match"),
    "mmstar": ("Lin-Chen/MMStar", None, "val", "average"),
}


def test_spec_table():
    assert set(S) == set(EXPECTED)
    for name, (ds, config, split, primary) in EXPECTED.items():
        spec = S[name]
        assert (spec.dataset_id, spec.config, spec.split, spec.primary_metric) == (ds, config, split, primary), name
        assert spec.primary_metric in spec.metrics
    assert S["pope"].accepts_dataset("lmms-lab/POPE") and S["pope"].accepts_dataset("LMMS-LAB-ENCODER/pope")
    assert not S["pope"].accepts_dataset("someone/POPE")
    assert S["gqa"].image_join is not None and S["gqa"].image_join.config == "testdev_balanced_images"
    assert S["mme"].max_new_tokens == 16 and S["mmbench_en_dev"].max_new_tokens == 1024
    assert S["mmstar"].metrics[-1] == "average" and len(S["mmstar"].metrics) == 7


# one right and one wrong answer per task: the per-sample score is 1 then 0
RIGHT_WRONG = {
    "pope": ({"question": "q", "answer": "yes", "question_id": 1}, "Yes", "no"),
    "mme": ({"question": "q", "answer": "Yes", "category": "OCR", "question_id": "a"}, "yes", "no"),
    "textvqa_val": ({"question": "q", "answers": ["cat"] * 10, "question_id": 1}, "Cat.", "dog"),
    "docvqa_val": ({"question": "q", "answers": ["abc"], "questionId": 1}, "ABC", "xyz"),
    "infovqa_val": ({"question": "q", "answers": ["abc"], "questionId": 1}, "abc", "xyz"),
    "chartqa": ({"question": "q", "answer": "10", "type": "human_test"}, "10.4", "11"),
    "ocrbench": ({"question": "q", "answer": ["cat"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition"}, "CAT", "dog"),
    "vqav2_val": ({"question": "q", "answers": [{"answer": "two", "answer_id": i} for i in range(10)], "question_id": 1}, "2", "3"),
    "vizwiz_vqa_val": ({"question": "q", "answers": ["unanswerable"] * 10, "question_id": 1}, "Unanswerable", "cat"),
    "gqa": ({"question": "q", "answer": "left", "imageId": "1"}, "Left", "right"),
    "scienceqa_img": ({"question": "q", "choices": ["x", "y"], "answer": 0, "hint": ""}, "A", "B"),
    "ai2d": ({"question": "q", "options": ["x", "y"], "answer": "0"}, "A. x", "B. y"),
    "mmbench_en_dev": (_mmb(5, "C"), "C", "A"),
    "mmmu_val": (
        {"id": "validation_Art_1", "question": "q", "question_type": "open", "options": "[]", "answer": "42"},
        "The answer is 42",
        "The answer is 41",
    ),
    "hallusion_bench_image": (
        {"category": "VD", "subcategory": "s", "set_id": 0, "figure_id": 1, "question_id": 0, "gt_answer": "1", "question": "q"},
        "Yes",
        "No",
    ),
    "realworldqa": ({"question": "q", "answer": "D"}, "D", "B"),
    "mmstar": ({"index": 1, "question": "q", "answer": "D", "category": "math", "l2_category": "geometry"}, "D", "A"),
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_task_scores_right_and_wrong(task):
    spec = S[task]
    doc, right, wrong = RIGHT_WRONG[task]
    r_right, r_wrong = spec.process_results(doc, right), spec.process_results(doc, wrong)
    assert spec.sample_score(r_right) == 1.0, task
    assert spec.sample_score(r_wrong) == 0.0, task
    assert set(r_right) <= set(spec.metrics) | set(spec.extra_metrics)
    assert spec.primary_metric in r_right or task == "mme"  # MME routes to one half
    assert isinstance(spec.doc_to_text(doc), str) and spec.doc_to_text(doc)


def test_column_kinds():
    class FakeImage:
        def convert(self, mode):
            return self

    assert column_value_ok(Column("image", "image"), FakeImage())
    assert column_value_ok(Column("image", "image"), {"bytes": b"", "path": None})
    assert not column_value_ok(Column("image", "image"), "a.png")
    assert column_value_ok(Column("answers", "list[str]"), ["a", "b"]) and not column_value_ok(Column("answers", "list[str]"), "a")
    assert not column_value_ok(Column("answer", "int"), True)
    assert column_value_ok(Column("hint", "str", nullable=True), None) and not column_value_ok(Column("hint", "str"), None)
    assert column_value_ok(Column("answers", "list[dict]"), [{"answer": "x"}])
    assert math.isclose(S["ocrbench"].aggregate("ocrbench_accuracy", []), 0.0)
