"""Small local copies of the lmms-eval datasets, laid out as the hub dataset repos are.

``write_fixture(task, root)`` writes ``root/<dataset id>/`` as a snapshot download of the
task's hub repo gives it: a ``README.md`` whose YAML front matter declares the repo's
``configs`` (``config_name`` and ``data_files``: split -> path pattern), and one parquet file
per config and split (``<config dir>/<split>-00000-of-00001.parquet``, ``data/`` for the
``default`` config). Columns carry the names and ``datasets`` types of the real hub data
(lmms-lab / lmms-lab-encoder, echo840/OCRBench, Lin-Chen/MMStar); images are an ``Image``
feature (parquet struct ``{bytes, path}``) holding small solid-colour PNGs, one colour per
row and image column, so a test can tell which image reached which sample.

Besides the task's own config and split, each repo holds the other splits / configs the hub
repo has (a few "decoy" rows whose questions start with ``[decoy ...]``), so loading the
wrong one shows up as a wrong prompt. DocVQA and InfographicVQA share one repo (both
configs are always written), as do GQA's instructions and images configs.

``fixture_rows(task, n)`` gives the rows of the task's config/split without their image
columns, exactly as written; ``fixture_colours(task, n)`` the colour of the image each row
shows first (for GQA: the image its ``imageId`` names in ``testdev_balanced_images``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from vlmcompress.tasks.lmms.specs import LMMS_TASK_SPECS

S = Value("string")
I64 = Value("int64")
BROKEN_IMAGE_BYTES = b"\x89PNG\r\n\x1a\n this is not an image"

Rows = list[dict[str, Any]]
# config name -> split -> (features, rows)
Repo = dict[str, dict[str, tuple[Features, Rows]]]


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def colour(key: int) -> tuple[int, int, int]:
    """A distinct solid colour per key (rows, and image columns of one row)."""
    return ((37 * key + 11) % 256, (91 * key + 53) % 256, (173 * key + 97) % 256)


def _png(rgb: tuple[int, int, int], mode: str) -> bytes:
    """32x32 solid colour PNG; saved in ``mode`` (RGB, RGBA or P) so decoding must convert."""
    img = PILImage.new("RGB", (32, 32), rgb)
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=4)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image(key: int, name: str, broken: bool = False) -> dict[str, Any]:
    if broken:
        return {"bytes": BROKEN_IMAGE_BYTES, "path": name}
    return {"bytes": _png(colour(key), ("RGB", "RGBA", "P")[key % 3]), "path": name}


def _decoy(rows: Rows, split: str, k: int = 2) -> Rows:
    """The first ``k`` rows with a question marking them as another split's."""
    out = []
    for r in rows[:k]:
        r = dict(r)
        r["question"] = f"[decoy {split}] {r['question']}"
        out.append(r)
    return out


# --------------------------------------------------------------------------------------
# One builder per hub repo: (n rows of the task's split, broken image rows) -> Repo
# --------------------------------------------------------------------------------------

POPE_OBJECTS = ["dining table", "car", "person", "dog", "umbrella", "bottle"]


def _pope(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"id": S, "question_id": S, "question": S, "answer": S, "image_source": S, "image": Image(), "category": S})
    rows = [
        {
            "id": str(i),
            "question_id": str(i + 1),
            # POPE questions come with a trailing space in places; the prompt strips them
            "question": f" Is there a {POPE_OBJECTS[i % len(POPE_OBJECTS)]} in the image? ",
            "answer": "yes" if i % 2 == 0 else "no",
            "image_source": f"COCO_val2014_{310196 + i:012d}",
            "image": _image(i, f"COCO_val2014_{310196 + i:012d}.jpg", i in broken),
            "category": ("adversarial", "popular", "random")[(i // 2) % 3],
        }
        for i in range(n)
    ]
    return {"default": {"test": (f, rows)}, "Full": {"adversarial": (f, _decoy(rows, "adversarial"))}}


MME_CATEGORIES = ["existence", "count", "code_reasoning", "OCR", "color", "commonsense_reasoning", "position", "numerical_calculation"]


def _mme(n: int, broken: frozenset[int]) -> Repo:
    """Two questions per image (yes then no), sharing ``question_id`` (the image path)."""
    f = Features({"question_id": S, "image": Image(), "question": S, "answer": S, "category": S})
    rows = []
    for i in range(n):
        k = i // 2
        cat = MME_CATEGORIES[k % len(MME_CATEGORIES)]
        thing = ("a dog", "two people", "a for loop")[k % 3]
        rows.append(
            {
                "question_id": f"{cat}/{k:04d}.png",
                "image": _image(i, f"{k:04d}.png", i in broken),
                "question": f"Is there {thing} in this image? Please answer yes or no." if i % 2 == 0 else f"Is there no {thing} in this image? Please answer yes or no.",
                "answer": "Yes" if i % 2 == 0 else "No",
                "category": cat,
            }
        )
    return {"default": {"test": (f, rows)}}


TEXTVQA_ANSWERS = [
    ["nous les gosses"] * 10,
    ["dakota"] * 7 + ["dakota digital"] * 3,
    ["nikon"] * 10,
    ["2"] * 10,
    ["yes"] * 2 + ["no"] * 8,
    ["coca cola"] * 10,
]


def _textvqa(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "image_id": S,
            "question_id": I64,
            "question": S,
            "question_tokens": List(S),
            "image": Image(),
            "image_width": I64,
            "image_height": I64,
            "flickr_original_url": S,
            "flickr_300k_url": S,
            "answers": List(S),
            "image_classes": List(S),
            "set_name": S,
            "ocr_tokens": List(S),
        }
    )
    rows = []
    for i in range(n):
        q = f"what is the BRAND name shown on item {i}?"
        rows.append(
            {
                "image_id": f"{0x3A0B + i:016x}",
                "question_id": 34602 + i,
                "question": q,
                "question_tokens": q.rstrip("?").split(),
                "image": _image(i, f"{0x3A0B + i:016x}.jpg", i in broken),
                "image_width": 1024,
                "image_height": 768,
                "flickr_original_url": f"https://farm1.staticflickr.com/{i}/x_o.jpg",
                "flickr_300k_url": f"https://c1.staticflickr.com/{i}/x_z.jpg",
                "answers": TEXTVQA_ANSWERS[i % len(TEXTVQA_ANSWERS)],
                "image_classes": ["Camera"],
                "set_name": "val",
                "ocr_tokens": ["nous", "les", "gosses"],
            }
        )
    return {"default": {"train": (f, _decoy(rows, "train")), "validation": (f, rows), "test": (f, _decoy(rows, "test"))}}


DOCVQA_ANSWERS = [["University of Pittsburgh"], ["1/8/93"], ["abcd"], ["T.F. Riehl"], ["itc"], ["Dr. John Smith", "John Smith"]]
INFOVQA_ANSWERS = [["18%"], ["yes"], ["social media", "social networks"], ["1,540"], ["india"], ["42"]]


def _docvqa(n: int, broken: frozenset[int]) -> Repo:
    """lmms-lab(-encoder)/DocVQA: configs DocVQA and InfographicVQA, validation and test."""
    fd = Features(
        {
            "questionId": S,
            "question": S,
            "question_types": List(S),
            "image": Image(),
            "docId": I64,
            "ucsf_document_id": S,
            "ucsf_document_page_no": S,
            "answers": List(S),
            "data_split": S,
        }
    )
    doc_rows = [
        {
            "questionId": str(337 + i),
            "question": f"what is the name mentioned in line {i} of the letter?",
            "question_types": ["handwritten", "form"],
            "image": _image(i, f"docvqa_{i}.png", i in broken),
            "docId": 279 + i,
            "ucsf_document_id": f"xnbl{i:04d}",
            "ucsf_document_page_no": "1",
            "answers": DOCVQA_ANSWERS[i % len(DOCVQA_ANSWERS)],
            "data_split": "val",
        }
        for i in range(n)
    ]
    fi = Features(
        {
            "questionId": S,
            "question": S,
            "answers": List(S),
            "answer_type": List(S),
            "image": Image(),
            "image_url": S,
            "operation/reasoning": List(S),
            "ocr": S,
            "data_split": S,
        }
    )
    info_rows = [
        {
            "questionId": str(98313 + i),
            "question": f"Which value is shown in panel {i} of the infographic?",
            "answers": INFOVQA_ANSWERS[i % len(INFOVQA_ANSWERS)],
            "answer_type": ["single span"],
            "image": _image(i, f"infographic_{i}.jpeg", i in broken),
            "image_url": f"https://example.org/infographic_{i}.jpeg",
            "operation/reasoning": [],
            "ocr": "{}",
            "data_split": "val",
        }
        for i in range(n)
    ]
    return {
        "DocVQA": {"validation": (fd, doc_rows), "test": (fd, _decoy(doc_rows, "test"))},
        "InfographicVQA": {"validation": (fi, info_rows), "test": (fi, _decoy(info_rows, "test"))},
    }


CHARTQA = [("human_test", "12"), ("augmented_test", "Red"), ("augmented_test", "7"), ("human_test", "2015"), ("human_test", "0.57"), ("augmented_test", "Yes")]


def _chartqa(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"type": S, "question": S, "answer": S, "image": Image()})
    rows = [
        {
            "type": CHARTQA[i % 6][0],
            "question": f"What is the value of bar {i} in the chart?",
            "answer": CHARTQA[i % 6][1],
            "image": _image(i, f"chart_{i}.png", i in broken),
        }
        for i in range(n)
    ]
    return {"default": {"test": (f, rows)}}


OCRBENCH = [
    ("IIIT5K", "Regular Text Recognition", ["CENTRE"]),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["x^{2}+1"]),
    ("docVQA", "Doc-oriented VQA", ["2.5 billion"]),
    ("FUNSD", "Key Information Extraction", ["dog"]),
    ("WordArt", "Artistic Text Recognition", ["HELLO"]),
    ("textVQA", "Scene Text-centric VQA", ["cat", "kitten"]),
]


def _ocrbench(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"dataset": S, "question": S, "question_type": S, "answer": List(S), "image": Image()})
    rows = [
        {
            "dataset": OCRBENCH[i % 6][0],
            "question": f"  what is written in the image {i}?  ",
            "question_type": OCRBENCH[i % 6][1],
            "answer": OCRBENCH[i % 6][2],
            "image": _image(i, f"ocr_{i}.jpg", i in broken),
        }
        for i in range(n)
    ]
    return {"default": {"test": (f, rows)}}


VQAV2_ANSWERS = [["2"] * 10, ["yes"] * 10, ["red"] * 2 + ["white"] * 8, ["man's"] * 3 + ["woman"] * 7, ["tennis"] * 10, ["red blue"] * 10]


def _vqav2(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "question_type": S,
            "multiple_choice_answer": S,
            "answers": List({"answer": S, "answer_confidence": S, "answer_id": I64}),
            "image_id": I64,
            "answer_type": S,
            "question_id": I64,
            "question": S,
            "image": Image(),
        }
    )
    rows = []
    for i in range(n):
        golds = VQAV2_ANSWERS[i % 6]
        rows.append(
            {
                "question_type": "what",
                "multiple_choice_answer": max(set(golds), key=golds.count),
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(golds)],
                "image_id": 262148 + i,
                "answer_type": "other",
                "question_id": 262148000 + i,
                "question": f"What is in Picture {i}?",
                "image": _image(i, f"COCO_val2014_{262148 + i:012d}.jpg", i in broken),
            }
        )
    return {"default": {"validation": (f, rows), "testdev": (f, _decoy(rows, "testdev"))}}


VIZWIZ_ANSWERS = [["unanswerable"] * 10, ["soup"] * 10, ["blue"] + ["navy"] * 9, ["coffee"] * 10, ["20 dollars"] * 10, ["5"] * 10]


def _vizwiz(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"question_id": S, "image": Image(), "question": S, "answers": List(S), "category": S})
    rows = [
        {
            "question_id": f"VizWiz_val_{i:08d}.jpg",
            "image": _image(i, f"VizWiz_val_{i:08d}.jpg", i in broken),
            "question": f"What Is This item {i}?",
            "answers": VIZWIZ_ANSWERS[i % 6],
            "category": "other" if i % 2 else "unanswerable",
        }
        for i in range(n)
    ]
    return {"default": {"val": (f, rows), "test": (f, _decoy(rows, "test"))}}


GQA_ANSWERS = ["left", "no", "yes", "white", "table", "t-shirt"]


def gqa_image_id(i: int) -> str:
    return f"n{161313 + 7 * i}"


def _gqa(n: int, broken: frozenset[int]) -> Repo:
    """Instructions (testdev_balanced_instructions) and images (testdev_balanced_images),
    joined by ``imageId`` -> ``id``. The images config lists the images in another order
    and holds one no question names."""
    fq = Features(
        {
            "id": S,
            "imageId": S,
            "question": S,
            "answer": S,
            "fullAnswer": S,
            "isBalanced": Value("bool"),
            "types": {"structural": S, "semantic": S, "detailed": S},
            "semanticStr": S,
        }
    )
    rows = [
        {
            "id": f"20{968000 + i}",
            "imageId": gqa_image_id(i),
            "question": f"Is the object {i} on the left or on the right?",
            "answer": GQA_ANSWERS[i % 6],
            "fullAnswer": f"The answer is {GQA_ANSWERS[i % 6]}.",
            "isBalanced": True,
            "types": {"structural": "choose", "semantic": "rel", "detailed": "positionChoose"},
            "semanticStr": f"select: object ({i})->choose rel: left|right",
        }
        for i in range(n)
    ]
    fi = Features({"id": S, "image": Image()})
    images = [{"id": gqa_image_id(i), "image": _image(i, f"{gqa_image_id(i)}.jpg", i in broken)} for i in reversed(range(n))]
    images.insert(1, {"id": "n999999", "image": _image(997, "n999999.jpg")})
    return {
        "testdev_balanced_instructions": {"testdev": (fq, rows)},
        "testdev_balanced_images": {"testdev": (fi, images)},
    }


SCIENCEQA = [
    (["rough", "smooth"], 1, "Select the better answer."),
    (["Earth", "Mars", "Venus"], 0, ""),
    (["weather", "climate", "season"], 2, "Read the text about the weather."),
    (["solid", "liquid"], 1, ""),
    (["yes", "no"], 0, ""),
    (["magnet", "glass"], 1, "Figure: a magnet."),
]


def _scienceqa(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "image": Image(),
            "question": S,
            "choices": List(S),
            "answer": Value("int8"),
            "hint": S,
            "task": S,
            "grade": S,
            "subject": S,
            "topic": S,
            "category": S,
            "skill": S,
            "lecture": S,
            "solution": S,
        }
    )
    rows = [
        {
            "image": _image(i, f"sqa_{i}.png", i in broken),
            "question": f"Which word best describes item {i}?",
            "choices": SCIENCEQA[i % 6][0],
            "answer": SCIENCEQA[i % 6][1],
            "hint": SCIENCEQA[i % 6][2],
            "task": "closed choice",
            "grade": "grade2",
            "subject": "natural science",
            "topic": "physics",
            "category": "Materials",
            "skill": "Identify properties of an object",
            "lecture": "An object has different properties.",
            "solution": "Look at the object.",
        }
        for i in range(n)
    ]
    return {
        "ScienceQA-FULL": {"test": (f, _decoy(rows, "full test"))},
        "ScienceQA-IMG": {"test": (f, rows), "validation": (f, _decoy(rows, "validation"))},
    }


AI2D = [(["dog", "cat", "fish"], "1"), (["sun", "moon"], "0"), (["leaf", "stem", "root", "seed"], "2"), (["A", "B", "C", "D"], "3"), (["egg", "larva"], "0"), (["cat", "dog"], "1")]


def _ai2d(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"question": S, "options": List(S), "answer": S, "image": Image()})
    rows = [
        {
            "question": f"Which stage is labelled {i} in the diagram?",
            "options": AI2D[i % 6][0],
            "answer": AI2D[i % 6][1],
            "image": _image(i, f"ai2d_{i}.png", i in broken),
        }
        for i in range(n)
    ]
    return {"default": {"test": (f, rows)}}


# (index offset, options A-D, answer, hint): question 1 with its two rotations, question 2
# with one, question 3 alone (index = original + k * 1e6, options rotated with the answer)
MMBENCH = [
    (1, ("cat", "dog", "car", None), "B", None),
    (1_000_001, ("dog", "car", "cat", None), "A", None),
    (2_000_001, ("car", "cat", "dog", None), "C", None),
    (2, ("yes", "no", None, None), "A", "The picture shows a street."),
    (1_000_002, ("no", "yes", None, None), "B", "The picture shows a street."),
    (3, ("red", "green", "blue", "yellow"), "D", None),
]


def _mmbench(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "index": I64,
            "question": S,
            "hint": S,
            "A": S,
            "B": S,
            "C": S,
            "D": S,
            "answer": S,
            "category": S,
            "image": Image(),
            "source": S,
            "L2-category": S,
            "comment": S,
            "split": S,
        }
    )

    def make(i: int, c: int, t: tuple) -> dict[str, Any]:
        index, opts, answer, hint = t
        return {
            "index": index + 10 * c,
            "question": f"Which option matches the main object (question {index % 1_000_000 + 10 * c})?",
            "hint": hint,
            **dict(zip("ABCD", opts)),
            "answer": answer,
            "category": "object_localization",
            "image": _image(i, f"mmbench_{i}.jpg", i in broken),
            "source": "MMBench",
            "L2-category": "fine-grained perception (single-instance)",
            "comment": None,
            "split": "dev",
        }

    rows = [make(i, i // len(MMBENCH), MMBENCH[i % len(MMBENCH)]) for i in range(n)]
    return {
        "cn": {"dev": (f, _decoy(rows, "cn dev"))},
        "en": {"dev": (f, rows), "test": (f, _decoy(rows, "en test"))},
    }


# (subject, number, question type, question, options, answer, image columns present)
MMMU = [
    ("Art", 1, "multiple-choice", "Which period is the painting <image 1> from?", "['Baroque', 'Rococo']", "A", 1),
    ("Art", 2, "multiple-choice", "<image 1> Which detail matches the painting?", "['<image 2>', '<image 3>']", "A", 3),
    ("Math", 1, "open", "What is x in <image 1>?", "[]", "42", 1),
    ("Math", 2, "open", "Compute the slope shown in <image 1>.", "[]", "3.5", 1),
    ("Physics", 1, "multiple-choice", "What is the speed of the cart in <image 1>?", "['1 m/s', '2 m/s', '3 m/s', '4 m/s']", "C", 1),
    ("Physics", 2, "multiple-choice", "<image 1> and <image 2> plot one run. Which speed does it reach at t = 2?", "['1 m/s', '2 m/s', '3 m/s', '4 m/s']", "C", 2),
]


def _mmmu(n: int, broken: frozenset[int]) -> Repo:
    images = {f"image_{k}": Image() for k in range(1, 8)}
    f = Features({"id": S, "question": S, "options": S, "explanation": S, **images, "img_type": S, "answer": S, "topic_difficulty": S, "question_type": S, "subfield": S})

    def make(i: int, c: int, t: tuple) -> dict[str, Any]:
        subject, number, qtype, question, options, answer, shown = t
        row = {
            "id": f"validation_{subject}_{number + 10 * c}",
            "question": question,
            "options": options,
            "explanation": "",
            "img_type": "['Paintings']",
            "answer": answer,
            "topic_difficulty": "Medium",
            "question_type": qtype,
            "subfield": subject,
        }
        for k in range(1, 8):
            row[f"image_{k}"] = _image(100 * (k - 1) + i, f"{subject}_{i}_{k}.png", k == 1 and i in broken) if k <= shown else None
        return row

    rows = [make(i, i // len(MMMU), MMMU[i % len(MMMU)]) for i in range(n)]
    return {"default": {"dev": (f, _decoy(rows, "dev")), "validation": (f, rows)}}


# (category, subcategory, set_id, figure_id, question_id, gt_answer)
HALLUSION = [
    ("VD", "chart", "0", "0", "0", "1"),
    ("VD", "chart", "0", "0", "1", "0"),
    ("VD", "chart", "0", "1", "0", "0"),
    ("VD", "chart", "0", "1", "1", "1"),
    ("VS", "map", "0", "0", "0", "1"),
    ("VS", "map", "0", "1", "0", "0"),
]


def _hallusion(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "category": S,
            "subcategory": S,
            "visual_input": S,
            "set_id": S,
            "figure_id": S,
            "sample_note": S,
            "question_id": S,
            "question": S,
            "gt_answer_details": S,
            "gt_answer": S,
            "filename": S,
            "image": Image(),
        }
    )

    def make(i: int, c: int, t: tuple) -> dict[str, Any]:
        cat, sub, set_id, fig, qid, gt = t
        set_id = str(int(set_id) + 10 * c)
        return {
            "category": cat,
            "subcategory": sub,
            "visual_input": "1",
            "set_id": set_id,
            "figure_id": fig,
            "sample_note": f"{sub} {set_id}",
            "question_id": qid,
            "question": f"According to the {sub}, is statement {qid} of set {set_id} true?",
            "gt_answer_details": "Yes, it is." if gt == "1" else "No, it is not.",
            "gt_answer": gt,
            "filename": f"./{cat}/{sub}/{set_id}_{fig}.png",
            "image": _image(i, f"{cat}_{sub}_{set_id}_{fig}.png", i in broken),
        }

    rows = [make(i, i // len(HALLUSION), HALLUSION[i % len(HALLUSION)]) for i in range(n)]
    return {"default": {"image": (f, rows), "non_image": (f, _decoy(rows, "non_image"))}}


RWQA_LETTER = "Please answer directly with only the letter of the correct option and nothing else."
RWQA_OPEN = "Please answer directly with a single word or number."
REALWORLDQA = [
    ("How many cars are in the left lane?\nA. 1\nB. 2\nC. 3\n" + RWQA_LETTER, "A"),
    ("Which direction is the arrow pointing?\nA. Left\nB. Right\nC. Up\nD. Down\n" + RWQA_LETTER, "C"),
    ("Is the traffic light red?\nA. Yes\nB. No\n" + RWQA_LETTER, "B"),
    ("How many lanes does the road have? " + RWQA_OPEN, "3"),
    ("Is the road going uphill or downhill? " + RWQA_OPEN, "Downhill"),
    ("What is the closest object?\nA. car\nB. tree\nC. sign\nD. person\n" + RWQA_LETTER, "D"),
]


def _realworldqa(n: int, broken: frozenset[int]) -> Repo:
    f = Features({"image": Image(), "question": S, "answer": S})
    rows = [{"image": _image(i, f"rwqa_{i}.webp", i in broken), "question": REALWORLDQA[i % 6][0], "answer": REALWORLDQA[i % 6][1]} for i in range(n)]
    return {"default": {"test": (f, rows)}}


MMSTAR = [
    ("coarse perception", "image emotion", "A"),
    ("coarse perception", "image emotion", "B"),
    ("fine-grained perception", "object counting", "C"),
    ("math", "geometry", "D"),
    ("math", "geometry", "A"),
    ("math", "statistical reasoning", "B"),
]


def _mmstar(n: int, broken: frozenset[int]) -> Repo:
    f = Features(
        {
            "index": I64,
            "question": S,
            "image": Image(),
            "answer": S,
            "category": S,
            "l2_category": S,
            "meta_info": {"source": S, "split": S, "image_path": S},
        }
    )
    rows = [
        {
            "index": i,
            "question": f"Which option describes picture {i}? Please answer yes or no.\nOptions: A: one, B: two, C: three, D: four ",
            "image": _image(i, f"images/{i}.jpg", i in broken),
            "answer": MMSTAR[i % 6][2],
            "category": MMSTAR[i % 6][0],
            "l2_category": MMSTAR[i % 6][1],
            "meta_info": {"source": "MMBench", "split": "val", "image_path": f"images/{i}.jpg"},
        }
        for i in range(n)
    ]
    return {"default": {"val": (f, rows)}}


BUILDERS: dict[str, Callable[[int, frozenset[int]], Repo]] = {
    "pope": _pope,
    "mme": _mme,
    "textvqa_val": _textvqa,
    "docvqa_val": _docvqa,
    "infovqa_val": _docvqa,
    "chartqa": _chartqa,
    "ocrbench": _ocrbench,
    "vqav2_val": _vqav2,
    "vizwiz_vqa_val": _vizwiz,
    "gqa": _gqa,
    "scienceqa_img": _scienceqa,
    "ai2d": _ai2d,
    "mmbench_en_dev": _mmbench,
    "mmmu_val": _mmmu,
    "hallusion_bench_image": _hallusion,
    "realworldqa": _realworldqa,
    "mmstar": _mmstar,
}


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _config_dir(config: str) -> str:
    return "data" if config == "default" else config


def readme(repo: Repo) -> str:
    """The hub README's YAML front matter: one ``configs`` entry per config, split -> files."""
    lines = ["---", "configs:"]
    for config in sorted(repo):
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in repo[config]:
            lines += [f"  - split: {split}", f"    path: {_config_dir(config)}/{split}-*"]
    lines += ["---", "", "A small local copy written by the vlmcompress tests, laid out as the hub repo.", ""]
    return "\n".join(lines)


def _edited(features: Features, rows: Rows, drop: tuple[str, ...], cast: Mapping[str, Callable[[Any], Any]]) -> tuple[Features, Rows]:
    rows = [{k: (cast[k](v) if k in cast else v) for k, v in r.items() if k not in drop} for r in rows]
    feats = {k: v for k, v in features.items() if k not in drop}
    for name in cast:
        if name in feats:  # the new values' own type, as ``datasets`` infers it
            feats[name] = datasets.Dataset.from_dict({name: [r[name] for r in rows]}).features[name]
    return Features(feats), rows


def write_fixture(
    task_name: str,
    root: Path,
    n: int = 6,
    *,
    dataset_id: str | None = None,
    broken_image_rows: tuple[int, ...] = (),
    drop_columns: tuple[str, ...] = (),
    cast_columns: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Path:
    """Write ``root/<dataset id>/`` (the task's reference id, or ``dataset_id``) with ``n``
    rows in the task's config/split; returns that folder.

    ``broken_image_rows``: rows of the task's split whose image bytes are not an image.
    ``drop_columns`` / ``cast_columns`` (column -> value mapping) edit every split of the
    task's config (a config's splits share one schema), to write a copy with a missing or
    wrongly typed column.
    """
    spec = LMMS_TASK_SPECS[task_name]
    repo = BUILDERS[task_name](n, frozenset(broken_image_rows))
    folder = Path(root) / (dataset_id or spec.dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    for config, splits in repo.items():
        for split, (features, rows) in splits.items():
            if config == (spec.config or "default") and (drop_columns or cast_columns):
                features, rows = _edited(features, rows, drop_columns, cast_columns or {})
            path = folder / _config_dir(config) / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    (folder / "README.md").write_text(readme(repo), encoding="utf-8")
    return folder


def fixture_rows(task_name: str, n: int = 6) -> Rows:
    """The task's config/split rows as written, without the spec's image columns."""
    spec = LMMS_TASK_SPECS[task_name]
    _, rows = BUILDERS[task_name](n, frozenset())[spec.config or "default"][spec.split]
    return [{k: v for k, v in r.items() if k not in spec.image_columns} for r in rows]


def fixture_colours(task_name: str, n: int = 6) -> list[tuple[int, int, int]]:
    """The colour of the first image each row of the task's split shows."""
    # row i's image (MMMU: its image_1, key 100 * 0 + i; GQA: the image its imageId names)
    return [colour(i) for i in range(n)]


__all__ = ["BROKEN_IMAGE_BYTES", "BUILDERS", "colour", "fixture_colours", "fixture_rows", "gqa_image_id", "readme", "write_fixture"]
