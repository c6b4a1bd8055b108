"""The lmms-eval tasks end to end on local hub-layout copies (``tests/lmms_fixtures.py``).

For every task in ``LMMS_TASK_SPECS``: the copy loads through ``TASKS.get(name).samples``
(what ``vlmcompress run --data-dir`` calls), ``--limit`` takes the first rows in order,
``doc_id`` is the row index, prompts are the spec's ``doc_to_text`` of the row, images are
PIL RGB and the right one per row; a fixed set of predictions scores the same through
``evaluate`` + ``aggregate`` and through ``rescore`` (``vlmcompress score``), and equals the
values worked out by hand in the comments from the official rules (lmms-eval 0.7.3, see
``test_lmms_scorers.py`` for the rules one by one). None of the expected numbers was
produced by running the scorer.

Nothing here touches the network or the user's HF cache: ``datasets`` runs offline with its
cache in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from lmms_fixtures import fixture_colours, fixture_rows, write_fixture
from vlmcompress.cli import cli
from vlmcompress.errors import ConfigError
from vlmcompress.rescoring import rescore
from vlmcompress.tasks import TASKS
from vlmcompress.tasks.lmms.specs import LMMS_TASK_SPECS

N = 6  # rows in each task's split (the fixture's default)


pytestmark = pytest.mark.usefixtures("offline_datasets")


# --------------------------------------------------------------------------------------
# Predictions per task, with the per-sample scores and the aggregates derived by hand
# --------------------------------------------------------------------------------------

# task -> (predictions for rows 0..5, per-sample scores, aggregate {metric: value})
CASES: dict[str, tuple[list[str], list[float], dict[str, float]]] = {
    # golds yes/no/yes/no/yes/no; exact (lower-cased, stripped) match, "yes" positive:
    # 0 TP, 1 TN, 2 FN ("no" to yes), 3 FP ("yes" to no), 4 TP, 5 "no." is neither yes nor no
    # (wrong, not counted). accuracy 3/6; precision 2/(2+1); recall 2/(2+1); F1 = 2/3;
    # yes ratio = share of gold "yes" = 3/6; (ours) share of predicted "yes" = 3/6
    "pope": (
        ["Yes", "no", "no", "yes", "yes", "No."],
        [1, 1, 0, 0, 1, 0],
        {"pope_accuracy": 0.5, "pope_precision": 2 / 3, "pope_recall": 2 / 3, "pope_f1_score": 2 / 3, "pope_yes_ratio": 0.5, "pope_pred_yes_ratio": 0.5},
    ),
    # pairs: existence (rows 0,1) both right -> acc 100 + acc+ 100 = 200;
    # count (2,3): "yes" to the no-question wrong -> acc 50 + acc+ 0 = 50; perception = 250.
    # code_reasoning (4,5; cognition): "The answer is yes" has no yes/no in its first 4
    # characters -> other, wrong; "No" right -> 50 + 0 = 50
    "mme": (
        ["Yes", "No", "yes", "yes", "The answer is yes", "No"],
        [1, 1, 1, 0, 0, 1],
        {"mme_perception_score": 250.0, "mme_cognition_score": 50.0},
    ),
    # VQA accuracy, mean over the 10 leave-one-out subsets of min(1, matches / 3), EvalAI
    # normalisation: 0 exact -> 1; 1 "dakota digital" is 3 of 10: leaving one of them out
    # 2/3, leaving a "dakota" out 1 -> (3 * 2/3 + 7) / 10 = 0.9; 2 -> 0; 3 "two" -> "2" -> 1;
    # 4 "yes" is 2 of 10 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6; 5 think block dropped,
    # "Coca-Cola." -> "coca cola" -> 1. Mean 4.5 / 6 = 0.75
    "textvqa_val": (
        ["Nous les gosses", "Dakota Digital", "canon", "two", "yes", "<think>hmm</think> Coca-Cola."],
        [1, 0.9, 0, 1, 0.6, 1],
        {"exact_match": 0.75},
    ),
    # ANLS: 1 - edit distance / max raw length, 0 below 0.5, best gold: 0 case only -> 1;
    # 1 -> 1; 2 "abxy"/"abcd" 2/4 -> 0.5 (kept); 3 "tf riehl" vs "t.f. riehl" 2/10 -> 0.8;
    # 4 "philip morris" vs "itc" -> 0; 5 "John Smith" equals the second gold -> 1.
    # Mean 4.3 / 6
    "docvqa_val": (
        ["university of pittsburgh", "1/8/93", "abxy", "TF Riehl", "philip morris", "John Smith"],
        [1, 1, 0.5, 0.8, 0, 1],
        {"anls": 4.3 / 6},
    ),
    # 0 -> 1; 1 "no" vs "yes" 3/3 -> 0; 2 second gold, case folded -> 1; 3 "1540" vs "1,540"
    # 1/5 -> 0.8; 4 "indiana" vs "india" 2/7 -> 5/7; 5 "4" vs "42" 1/2 -> 0.5.
    # Mean (3.3 + 5/7) / 6
    "infovqa_val": (
        ["18%", "no", "Social Media", "1540", "indiana", "4"],
        [1, 0, 1, 0.8, 5 / 7, 0.5],
        {"anls": (3.3 + 5 / 7) / 6},
    ),
    # relaxed accuracy (5% of a non-zero numeric target, else case-insensitive equality):
    # 0 12.5 vs 12 (4.2%) right [human]; 1 blue/Red wrong [augmented]; 2 right [augmented];
    # 3 2016 vs 2015 (0.05%) right [human]; 4 "57%" = 0.57 right [human]; 5 wrong [augmented].
    # overall 4/6; human split 3/3; augmented split 1/3
    "chartqa": (
        ["12.5", "blue", "7", "2016", "57%", "No"],
        [1, 0, 1, 1, 1, 0],
        {"relaxed_overall": 4 / 6, "relaxed_human_split": 1.0, "relaxed_augmented_split": 1 / 3},
    ),
    # gold substring of the answer: 0 lower-cased -> 1; 1 HME is case-sensitive, "X^{2}+1"
    # lacks "x^{2}+1" -> 0; 2 -> 1; 3 "d o g" lacks "dog" -> 0; 4 full-width folded -> 1;
    # 5 "kitten" -> 1. 4 right: accuracy 4/1000 (fixed divisor), per-document mean 4/6
    "ocrbench": (
        ["centre", "X ^ { 2 } + 1", "It is 2.5 billion dollars", "d o g", "ＨＥＬＬＯ", "a kitten"],
        [1, 0, 1, 0, 1, 1],
        {"ocrbench_accuracy": 4 / 1000, "ocrbench_doc_mean": 4 / 6},
    ),
    # VQAv2 normalisation: 0 "two" -> "2" -> 1; 1 -> 0; 2 "red" is 2 of 10 -> 0.6;
    # 3 "man's" is 3 of 10 -> (3 * 2/3 + 7) / 10 = 0.9; 4 "Tennis." -> "tennis" -> 1;
    # 5 "red,blue" -> "red blue" -> 1. Mean 4.5 / 6 = 0.75
    "vqav2_val": (
        ["two", "no", "red", "man's", "Tennis.", "red,blue"],
        [1, 0, 0.6, 0.9, 1, 1],
        {"exact_match": 0.75},
    ),
    # EvalAI: 0 -> 1; 1 -> 0; 2 "blue" is 1 of 10: leaving it out 0, leaving a "navy" out
    # 1/3 -> 9/3 / 10 = 0.3; 3 period stripped -> 1; 4 "twenty" is no number word -> 0;
    # 5 "five" -> "5" -> 1. Mean 3.3 / 6 = 0.55
    "vizwiz_vqa_val": (
        ["Unanswerable", "unanswerable", "blue", "coffee.", "twenty dollars", "five"],
        [1, 0, 0.3, 1, 0, 1],
        {"exact_match": 0.55},
    ),
    # exact match ignoring case and ASCII punctuation (articles kept): 0 -> 1; 1 -> 0;
    # 2 "Yes." -> 1; 3 "the white" -> 0; 4 -> 1; 5 "tshirt" vs "t-shirt" -> 1. Mean 4/6
    "gqa": (
        ["Left", "yes", "Yes.", "the white", "table", "tshirt"],
        [1, 0, 1, 0, 1, 1],
        {"exact_match": 4 / 6},
    ),
    # targets B A C B A B; right iff the answer equals the letter (any case) or starts with
    # a capital letter and "." naming it: "B" 1, "A." 1, "(C)" 0, "b" 1, "The answer is A" 0,
    # "B. glass" 1. Mean 4/6
    "scienceqa_img": (
        ["B", "A.", "(C)", "b", "The answer is A", "B. glass"],
        [1, 1, 0, 1, 0, 1],
        {"exact_match": 4 / 6},
    ),
    # targets B A C D A B; leading "X." filter on the raw text, then exact match ignoring case
    # and punctuation: "B. cat" -> B 1; "(A)" -> a 1; "B" 0; "d" 1; "The answer is A" 0;
    # "<think>A</think>B. cat": no leading "X." on the raw text, then "b cat" 0. Mean 3/6
    "ai2d": (
        ["B. cat", "(A)", "B", "d", "The answer is A", "<think>A</think>B. cat"],
        [1, 1, 0, 1, 0, 0],
        {"exact_match": 0.5},
    ),
    # circular: question 1 (rows 0-2: "B" token, "A." token, option text "dog" = C) right on
    # every copy; question 2 (rows 3,4) rotation answered A for gold B: 0; question 3 (row 5)
    # C for D: 0 -> 1 of 3 questions = 100/3
    "mmbench_en_dev": (
        ["B", "A. dog", "dog", "A", "A", "C"],
        [1, 1, 1, 1, 0, 0],
        {"gpt_eval_score": 100 / 3},
    ),
    # 0 "(A)" right; 1 "(B)" for A wrong; 2 "is " -> "42" right; 3 "= 2.50" -> 2.5 != 3.5
    # wrong; 4 "C" right; 5 > 5 words, only option text "3 m/s" found -> C right.
    # Art 1/2, Math 1/2, Physics 2/2 -> (1 + 1 + 2) / 6 = 0.666.. rounded to 5 decimals
    "mmmu_val": (
        ["(A)", "(B)", "The answer is 42", "x = 2.50", "C", "I would pick 3 m/s because it is fast"],
        [1, 0, 1, 0, 1, 1],
        {"mmmu_acc": 0.66667},
    ),
    # "yes" anywhere -> "1": right, right, wrong, right, right, wrong ("Yesterday") -> aAcc
    # 4/6 = 66.6667 (4 decimals). fAcc without VS figure 0: VD/f0 (rows 0,1) right, VD/f1
    # (2,3) wrong, VS/f1 (5) wrong -> 1/3. qAcc: VD/q0 (0,2) wrong, VD/q1 (1,3) right,
    # VS/q0 (4,5) wrong -> 1/3
    "hallusion_bench_image": (
        ["Yes", "No", "yes", "Yes, it is", "yes", "Yesterday it was no"],
        [1, 1, 0, 1, 1, 0],
        {"aAcc": 66.6667, "qAcc": 33.3333, "fAcc": 33.3333},
    ),
    # letters A C B -, open 3 Downhill, letter D: "A" 1; "The answer is C." ends with C 1;
    # "A" for B 0; "3." trailing period removed 1; "uphill" 0; "(D)" 1. Mean 4/6
    "realworldqa": (
        ["A", "The answer is C.", "A", "3.", "uphill", "(D)"],
        [1, 1, 0, 1, 0, 1],
        {"exact_match": 4 / 6},
    ),
    # per sub-category: image emotion 1/2, object counting 1/1, geometry 1/2 ("The answer is
    # D" right, "B" for A wrong), statistical reasoning 0/1 (no letter). Category = mean of
    # its sub-categories present: coarse 0.5, fine-grained 1, math (0.5 + 0)/2 = 0.25;
    # average over the 4 sub-categories = (0.5 + 1 + 0.5 + 0) / 4 = 0.5
    "mmstar": (
        ["A", "C", "(C)", "The answer is D", "B", "nothing"],
        [1, 0, 1, 1, 0, 0],
        {"coarse perception": 0.5, "fine-grained perception": 1.0, "math": 0.25, "average": 0.5},
    ),
}

TASK_NAMES = sorted(LMMS_TASK_SPECS)


def test_every_task_has_a_case():
    assert set(CASES) == set(LMMS_TASK_SPECS)


def assert_metrics(task, aggregated: dict[str, float], expected: dict[str, float]) -> None:
    """Every lmms-eval (YAML) metric the samples feed has its hand-derived value; metrics of
    this package's own (``extra_metrics``) are checked where a hand value is given."""
    yaml = set(task.spec.metrics)
    assert {m for m in aggregated if m in yaml} == {m for m in expected if m in yaml}
    checked = {m: v for m, v in expected.items() if m in yaml or m in aggregated}
    assert {m: aggregated[m] for m in checked} == pytest.approx(checked)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _scored_rows(task, samples, predictions):
    rows = []
    for sample, prediction in zip(samples, predictions, strict=True):
        score, metrics = task.evaluate(prediction, sample)
        rows.append({"score": score, "metrics": metrics, "prediction": prediction})
    return rows


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_samples_follow_the_split(name, tmp_path):
    spec = LMMS_TASK_SPECS[name]
    write_fixture(name, tmp_path, N)
    task = TASKS.get(name)
    rows, colours = fixture_rows(name, N), fixture_colours(name, N)

    # --limit: the first rows, in order; more than the split gives the split
    limited = task.samples(0, 4, tmp_path)
    assert [s.meta["doc_id"] for s in limited] == [0, 1, 2, 3]
    assert len(task.samples(0, 100, tmp_path)) == N
    samples = task.samples(0, None, tmp_path)
    assert [s.meta["doc_id"] for s in samples] == list(range(N))
    assert [s.question for s in limited] == [s.question for s in samples[:4]]

    for i, (sample, row) in enumerate(zip(samples, rows, strict=True)):
        assert sample.error is None, sample.error
        assert sample.id == f"{name}/{i}"
        # the prompt is the declaration's doc_to_text of that very row (decoy splits and
        # configs of the copy have other questions)
        assert sample.question == spec.doc_to_text(row)
        assert sample.doc == row  # the row the scorer reads, images left out
        image = sample.load_image()
        assert isinstance(image, PILImage.Image) and image.mode == "RGB"
        assert image.size == (32, 32)
        assert image.getpixel((16, 16)) == colours[i], "the image of another row"


def test_multi_image_docs_are_marked(tmp_path):
    # MMMU row 1 names <image 1> in the question and <image 2>, <image 3> in its options
    write_fixture("mmmu_val", tmp_path, N)
    samples = TASKS.get("mmmu_val").samples(0, None, tmp_path)
    assert samples[1].meta == {"doc_id": 1, "images_shown": 1, "images_in_doc": 3}
    assert samples[5].meta == {"doc_id": 5, "images_shown": 1, "images_in_doc": 2}
    assert samples[0].meta == {"doc_id": 0}


def test_gqa_images_come_from_the_images_config(tmp_path):
    # the images config lists the images in reverse order (and one no question names):
    # the colour check above already proves the join; here the raw join keys
    write_fixture("gqa", tmp_path, N)
    samples = TASKS.get("gqa").samples(0, 3, tmp_path)
    assert [s.doc["imageId"] for s in samples] == ["n161313", "n161320", "n161327"]
    assert all("image" not in s.doc for s in samples)


# --------------------------------------------------------------------------------------
# Scoring: evaluate + aggregate == rescore == hand-derived values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_scores_match_rescore_and_hand_values(name, tmp_path):
    predictions, per_sample, expected = CASES[name]
    write_fixture(name, tmp_path / "data", N)
    task = TASKS.get(name)
    rows = _scored_rows(task, task.samples(0, None, tmp_path / "data"), predictions)

    assert [r["score"] for r in rows] == pytest.approx(per_sample)
    aggregated = task.aggregate(rows)
    assert_metrics(task, aggregated, expected)
    assert task.spec.primary_metric in aggregated

    # the same predictions through `vlmcompress score`'s path, lines out of order
    jsonl = _write_jsonl(tmp_path / "preds.jsonl", [{"doc_id": i, "prediction": p} for i, p in reversed(list(enumerate(predictions)))])
    assert rescore(name, jsonl, tmp_path / "data") == aggregated


def test_rescore_reads_a_runs_samples_jsonl(tmp_path):
    # a run's samples.jsonl: doc_id under meta, rows of other tasks, failed samples without a
    # prediction (left out, as the run leaves them out): POPE rows 0, 1, 3, 4 ->
    # 0 TP, 1 TN, 3 FP, 4 TP: accuracy 3/4, precision 2/3, recall 2/2, F1 0.8, yes ratio 2/4,
    # predicted yes 3/4
    write_fixture("pope", tmp_path, N)
    predictions = CASES["pope"][0]
    lines = [{"task": "pope", "setting": "fp16", "meta": {"doc_id": i}, "prediction": predictions[i]} for i in (0, 1, 3, 4)]
    lines += [{"task": "pope", "setting": "fp16", "meta": {"doc_id": 2}, "prediction": None, "error": "out of memory"}]
    lines += [{"task": "mme", "setting": "fp16", "meta": {"doc_id": 0}, "prediction": "Yes"}]
    scores = rescore("pope", _write_jsonl(tmp_path / "samples.jsonl", lines), tmp_path)
    expected = {"pope_accuracy": 0.75, "pope_precision": 2 / 3, "pope_recall": 1.0, "pope_f1_score": 0.8, "pope_yes_ratio": 0.5, "pope_pred_yes_ratio": 0.75}
    assert_metrics(TASKS.get("pope"), scores, expected)


@pytest.mark.parametrize(("name", "value"), [("pope", 2 / 3), ("mme", 250.0), ("mmbench_en_dev", 100 / 3), ("hallusion_bench_image", 66.6667)])
def test_primary_interval_brackets_the_value(name, value, tmp_path):
    # grouped metrics (MME image pairs, MMBench rotations, HallusionBench sets) resample
    # whole groups; a group drawn twice must not make MME see an image with 4 questions
    write_fixture(name, tmp_path, N)
    task = TASKS.get(name)
    rows = _scored_rows(task, task.samples(0, None, tmp_path), CASES[name][0])
    assert task.aggregate(rows)[task.spec.primary_metric] == pytest.approx(value)
    lo, hi = task.primary_interval(rows, seed=0, resamples=300)
    assert lo <= value + 1e-9 and value - 1e-9 <= hi, (lo, value, hi)
    assert lo < hi
    assert task.primary_interval(rows, seed=0, resamples=300) == (lo, hi)  # seeded


# --------------------------------------------------------------------------------------
# What a user can get wrong: one line each
# --------------------------------------------------------------------------------------


def test_alias_folder_is_accepted(tmp_path):
    # older lmms-eval releases name lmms-lab/POPE; a copy under that id is used as is
    write_fixture("pope", tmp_path, N, dataset_id="lmms-lab/POPE")
    assert not (tmp_path / "lmms-lab-encoder").exists()
    samples = TASKS.get("pope").samples(0, 3, tmp_path)
    assert [s.meta["doc_id"] for s in samples] == [0, 1, 2] and all(s.error is None for s in samples)
    # an id that is neither the reference nor an alias is not picked up
    other = tmp_path / "other"
    write_fixture("pope", other, N, dataset_id="someone/POPE")
    with pytest.raises(ConfigError, match="no local copy of lmms-lab-encoder/POPE"):
        TASKS.get("pope").samples(0, 3, other)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_missing_copy_is_one_line(name, tmp_path):
    spec = LMMS_TASK_SPECS[name]
    with pytest.raises(ConfigError) as info:
        TASKS.get(name).samples(0, 2, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert spec.dataset_id in message and "huggingface-cli download" in message


@pytest.mark.parametrize(("name", "column"), [("pope", "question"), ("gqa", "imageId"), ("mmbench_en_dev", "L2-category"), ("mmmu_val", "image_1"), ("ocrbench", "question_type")])
def test_missing_column_is_one_line(name, column, tmp_path):
    write_fixture(name, tmp_path, N, drop_columns=(column,))
    with pytest.raises(ConfigError) as info:
        TASKS.get(name).samples(0, None, tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"no column {column!r}" in message


@pytest.mark.parametrize(
    ("name", "column", "cast", "kind"),
    [
        ("pope", "answer", lambda v: int(v == "yes"), "str"),
        ("scienceqa_img", "answer", str, "int"),
        ("textvqa_val", "answers", lambda v: v[0], "list[str]"),
        ("vqav2_val", "answers", lambda v: [a["answer"] for a in v], "list[dict]"),
        ("mme", "image", lambda v: v["path"], "image"),
    ],
)
def test_wrong_typed_column_is_one_line(name, column, cast, kind, tmp_path):
    write_fixture(name, tmp_path, N, cast_columns={column: cast})
    with pytest.raises(ConfigError) as info:
        TASKS.get(name).samples(0, None, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "wrong type" in message
    assert f"{column!r} (expected {kind}," in message


def test_inconsistent_or_truncated_files_are_one_line(tmp_path):
    import pyarrow.parquet as pq

    # en/dev without a column en/test has (files of two revisions mixed): the config
    # cannot be built
    folder = write_fixture("mmbench_en_dev", tmp_path / "mixed", N)
    dev = folder / "en" / "dev-00000-of-00001.parquet"
    pq.write_table(pq.read_table(dev).drop_columns(["L2-category"]), dev)
    with pytest.raises(ConfigError) as info:
        TASKS.get("mmbench_en_dev").samples(0, None, tmp_path / "mixed")
    message = str(info.value)
    assert "\n" not in message and "lmms-lab-encoder/MMBench" in message and "'en'" in message
    # an interrupted download: a parquet file cut short
    folder = write_fixture("pope", tmp_path / "cut", N)
    part = folder / "data" / "test-00000-of-00001.parquet"
    part.write_bytes(part.read_bytes()[:200])
    with pytest.raises(ConfigError) as info:
        TASKS.get("pope").samples(0, None, tmp_path / "cut")
    assert "\n" not in str(info.value) and "lmms-lab-encoder/POPE" in str(info.value)


def test_each_local_copy_has_its_own_cache(tmp_path):
    # `datasets` caches a local folder by its name and README patterns alone: without a cache
    # of its own per copy, a second copy (another data dir, the alias id, a copy rewritten
    # in place) would be read as the first one
    pope = TASKS.get("pope")
    write_fixture("pope", tmp_path / "a", 6)
    assert len(pope.samples(0, None, tmp_path / "a")) == 6
    write_fixture("pope", tmp_path / "b", 3)
    assert len(pope.samples(0, None, tmp_path / "b")) == 3
    write_fixture("pope", tmp_path / "c", 5, dataset_id="lmms-lab/POPE")
    assert len(pope.samples(0, None, tmp_path / "c")) == 5
    write_fixture("pope", tmp_path / "a", 4, broken_image_rows=(0,))  # rewritten in place
    samples = pope.samples(0, None, tmp_path / "a")
    assert len(samples) == 4 and samples[0].error is not None


@pytest.mark.parametrize("name", TASK_NAMES)
def test_broken_image_is_that_samples_error(name, tmp_path):
    write_fixture(name, tmp_path, N, broken_image_rows=(1,))
    samples = TASKS.get(name).samples(0, None, tmp_path)
    assert len(samples) == N
    broken = samples[1]
    assert broken.error and "cannot be decoded" in broken.error and "\n" not in broken.error
    assert broken.image is None and broken.meta["doc_id"] == 1
    for s in samples[:1] + samples[2:]:
        assert s.error is None and isinstance(s.load_image(), PILImage.Image) and s.load_image().mode == "RGB"


# --------------------------------------------------------------------------------------
# `vlmcompress score`
# --------------------------------------------------------------------------------------


def test_cli_score_json_is_rescores_dict(tmp_path):
    write_fixture("pope", tmp_path / "data", N)
    jsonl = _write_jsonl(tmp_path / "preds.jsonl", [{"doc_id": i, "prediction": p} for i, p in enumerate(CASES["pope"][0])])
    result = CliRunner().invoke(cli, ["score", "pope", str(jsonl), "--data-dir", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == rescore("pope", jsonl, tmp_path / "data")
    assert json.loads(lines[0])["pope_f1_score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"doc_id": 0, "prediction": "yes"}', '{"doc_id": 1, "prediction": '], "line 2: not JSON"),
        (['{"doc_id": -1, "prediction": "yes"}'], "line 1: doc_id must be a non-negative integer"),
        (['{"doc_id": 0, "prediction": 1}'], "line 1: prediction must be a string"),
        (['["yes"]'], "line 1: expected a JSON object"),
        (['{"doc_id": 99, "prediction": "yes"}'], "doc_id 99 is beyond the pope split (6 rows)"),
    ],
)
def test_cli_score_bad_predictions_exit_2_one_line(lines, fragment, tmp_path):
    write_fixture("pope", tmp_path / "data", N)
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["score", "pope", str(jsonl), "--data-dir", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert result.stdout == "" and "Traceback" not in result.output
