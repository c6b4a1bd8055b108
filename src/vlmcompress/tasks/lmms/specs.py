"""One declaration per lmms-eval task: data source, prompt, metrics and scoring callables.

Values follow the lmms-eval 0.7.3 wheel's ``lmms_eval/tasks/<task>/*.yaml`` (dataset path,
``dataset_name`` -> ``config``, ``test_split`` -> ``split``, ``generation_kwargs``,
``metric_list``, ``lmms_eval_specific_kwargs.default``). Dataset ids are the wheel's;
``aliases`` lists the ids older lmms-eval releases (<= 0.7.2) used, which many users hold.

``metrics`` are the YAML's scoring metrics in YAML order; the file-writing ``submission``
entries (TextVQA, MMBench) are left out. ``extra_metrics`` are computed here but are not in
the YAML (OCRBench's per-document mean).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from . import prompts
from . import results as R

# --------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------

ColumnKind = Literal["image", "str", "int", "str|int", "list[str]", "list[dict]"]


@dataclass(frozen=True)
class Column:
    """A column the scorer or prompt reads, with the Python type ``datasets`` yields for it.

    ``image`` is what ``datasets`` decodes an Image feature to (a PIL image) or its raw
    ``{"bytes", "path"}`` dict; ``nullable`` allows None.
    """

    name: str
    kind: ColumnKind
    nullable: bool = False


@dataclass(frozen=True)
class ImageJoin:
    """Images that live in another config of the dataset (GQA): the doc's ``doc_key`` value
    is looked up in ``config``/``split`` rows by ``image_key``, whose ``image_column`` is the
    doc's image (``gqa/utils.py::gqa_process_docs``)."""

    config: str
    split: str
    doc_key: str
    image_key: str
    image_column: str


Scale = Literal["fraction", "percent", "mme_points"]


@dataclass(frozen=True)
class LmmsTaskSpec:
    """How one lmms-eval task reads, prompts, scores and aggregates.

    ``process_results(doc, raw_response)`` gives ``{metric: per-sample value}``;
    ``aggregate(metric, values)`` turns that metric's per-sample values into lmms-eval's
    number (on ``primary_scale`` for the primary metric). ``sample_score(results)`` is the
    per-sample 0/1 (or 0..1) score behind the primary metric; when
    ``primary_is_sample_mean`` is True the primary metric is the mean of those scores
    (times 100 for a percent scale, up to the reference's rounding and OCRBench's fixed
    divisor); otherwise it is a per-sample proxy (correctness) of a grouped metric.
    ``judge`` is ``"rule-based"`` where lmms-eval's default asks a GPT judge.
    """

    name: str
    dataset_id: str
    split: str
    columns: tuple[Column, ...]
    doc_to_text: Callable[[Mapping[str, Any]], str]
    doc_to_target: Callable[[Mapping[str, Any]], Any]
    max_new_tokens: int | None
    metrics: tuple[str, ...]
    primary_metric: str
    process_results: R.ProcessResults
    sample_score: R.SampleScore
    reference: str
    # what most tasks share (a declaration spells out only where it differs)
    config: str | None = None
    aliases: tuple[str, ...] = ()
    image_columns: tuple[str, ...] = ("image",)
    question_column: str = "question"
    answer_column: str = "answer"
    pre_prompt: str = ""
    post_prompt: str = ""
    primary_scale: Scale = "fraction"
    aggregate: R.Aggregate = R.mean_aggregate
    primary_is_sample_mean: bool = True
    judge: str | None = None
    extra_metrics: tuple[str, ...] = ()
    image_join: ImageJoin | None = None
    doc_to_image_columns: Callable[[Mapping[str, Any]], list[str]] | None = None
    notes: str = ""
    all_dataset_ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_dataset_ids", (self.dataset_id, *self.aliases))
        if self.primary_metric not in self.metrics:
            raise ValueError(f"{self.name}: primary metric {self.primary_metric!r} not among {self.metrics}")

    def accepts_dataset(self, dataset_id: str) -> bool:
        """Whether a dataset id is the reference's or a known alias (case-insensitive, as the Hub)."""
        return dataset_id.lower() in {d.lower() for d in self.all_dataset_ids}

    def images_of(self, doc: Mapping[str, Any]) -> list[str]:
        """The image columns this doc shows, in order."""
        if self.doc_to_image_columns is not None:
            return self.doc_to_image_columns(doc)
        return list(self.image_columns)


def aggregate_all(spec: LmmsTaskSpec, per_sample: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every metric (YAML then extra) that at least one sample fed, aggregated."""
    out: dict[str, float] = {}
    for metric in (*spec.metrics, *spec.extra_metrics):
        values = [r[metric] for r in per_sample if metric in r]
        if values:
            out[metric] = spec.aggregate(metric, values)
    return out


def column_value_ok(column: Column, value: Any) -> bool:
    """Whether a decoded value has the column's expected type."""
    if value is None:
        return column.nullable
    kind = column.kind
    if kind == "image":
        return (isinstance(value, Mapping) and ("bytes" in value or "path" in value)) or hasattr(value, "convert")
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str|int":
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if kind == "list[dict]":
        return isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) for v in value)
    raise ValueError(f"unknown column kind {kind!r}")


def _col(name: str, kind: ColumnKind = "str", nullable: bool = False) -> Column:
    return Column(name, kind, nullable)


def _get(column: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda doc: doc[column]


_IMAGE = _col("image", "image")
_MMMU_IMAGES = tuple(f"image_{i}" for i in range(1, 8))

# --------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------

POPE = LmmsTaskSpec(
    name="pope",
    dataset_id="lmms-lab-encoder/POPE",
    aliases=("lmms-lab/POPE",),
    split="test",
    columns=(_IMAGE, _col("question"), _col("answer"), _col("question_id", "str|int")),
    post_prompt=prompts.SHORT_ANSWER,
    doc_to_text=prompts.plain_prompt("", prompts.SHORT_ANSWER, strip=True),
    doc_to_target=_get("answer"),
    max_new_tokens=128,
    metrics=R.POPE_METRICS,
    primary_metric="pope_f1_score",
    process_results=R.pope_process_results,
    aggregate=R.pope_aggregate,
    sample_score=R.pope_sample_score,
    primary_is_sample_mean=False,
    reference="lmms_eval/tasks/pope/pope.yaml, pope/utils.py",
    extra_metrics=("pope_pred_yes_ratio",),
    notes="F1 (yes = positive) is the number papers quote; sample_score is per-question accuracy.",
)

MME = LmmsTaskSpec(
    name="mme",
    dataset_id="lmms-lab-encoder/MME",
    aliases=("lmms-lab/MME",),
    split="test",
    columns=(_IMAGE, _col("question"), _col("answer"), _col("category"), _col("question_id")),
    post_prompt=prompts.SHORT_ANSWER,
    doc_to_text=prompts.mme_doc_to_text,
    doc_to_target=_get("answer"),
    max_new_tokens=16,
    metrics=("mme_perception_score", "mme_cognition_score"),
    primary_metric="mme_perception_score",
    primary_scale="mme_points",
    process_results=R.mme_process_results,
    aggregate=R.mme_aggregate,
    sample_score=R.mme_sample_score,
    primary_is_sample_mean=False,
    reference="lmms_eval/tasks/mme/mme.yaml, mme/utils.py",
    notes="Sum over categories of acc + acc+ (percent): perception /2000, cognition /800.",
)


def _vqa_columns(answers_kind: ColumnKind) -> tuple[Column, ...]:
    return (_IMAGE, _col("question"), _col("answers", answers_kind), _col("question_id", "str|int"))


TEXTVQA_VAL = LmmsTaskSpec(
    name="textvqa_val",
    dataset_id="lmms-lab-encoder/textvqa",
    aliases=("lmms-lab/textvqa",),
    split="validation",
    answer_column="answers",
    columns=_vqa_columns("list[str]"),
    post_prompt=prompts.SHORT_ANSWER,
    doc_to_text=prompts.plain_prompt("", prompts.SHORT_ANSWER, capitalize=True),
    doc_to_target=_get("answers"),
    max_new_tokens=None,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.vqa_process_results("evalai"),
    sample_score=R.metric_value("exact_match"),
    reference="lmms_eval/tasks/textvqa/textvqa_val.yaml, _default_template_textvqa_yaml, textvqa/utils.py",
    notes="YAML sets no max_new_tokens (only until 'ASSISTANT:'); the model wrapper's default applies. "
    "The YAML's doc_to_target 'answer' names no column of the dataset; the gold list is 'answers'.",
)

def _anls_spec(name: str, config: str, reference: str) -> LmmsTaskSpec:
    """DocVQA and InfographicVQA: two configs of one repo, the same prompt and ANLS scorer."""
    return LmmsTaskSpec(
        name=name,
        dataset_id="lmms-lab-encoder/DocVQA",
        aliases=("lmms-lab/DocVQA",),
        config=config,
        split="validation",
        answer_column="answers",
        columns=(_IMAGE, _col("question"), _col("answers", "list[str]"), _col("questionId", "str|int")),
        post_prompt=prompts.SHORT_ANSWER,
        doc_to_text=prompts.plain_prompt("", prompts.SHORT_ANSWER),
        doc_to_target=_get("answers"),
        max_new_tokens=32,
        metrics=("anls",),
        primary_metric="anls",
        process_results=R.anls_process_results,
        sample_score=R.metric_value("anls"),
        reference=reference,
    )


DOCVQA_VAL = _anls_spec("docvqa_val", "DocVQA", "lmms_eval/tasks/docvqa/docvqa_val.yaml, _default_template_docvqa_yaml, api/metrics.py::anls")
INFOVQA_VAL = _anls_spec("infovqa_val", "InfographicVQA", "lmms_eval/tasks/infovqa/infovqa_val.yaml, _default_template_infovqa_yaml, api/metrics.py::anls")

CHARTQA = LmmsTaskSpec(
    name="chartqa",
    dataset_id="lmms-lab-encoder/ChartQA",
    aliases=("lmms-lab/ChartQA",),
    split="test",
    columns=(_IMAGE, _col("question"), _col("answer"), _col("type")),
    post_prompt="\nAnswer the question with a single word.",
    doc_to_text=prompts.plain_prompt("", "\nAnswer the question with a single word."),
    doc_to_target=_get("answer"),
    max_new_tokens=16,
    metrics=("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"),
    primary_metric="relaxed_overall",
    process_results=R.chartqa_process_results,
    sample_score=R.metric_value("relaxed_overall"),
    reference="lmms_eval/tasks/chartqa/chartqa.yaml, chartqa/utils.py",
)

OCRBENCH = LmmsTaskSpec(
    name="ocrbench",
    dataset_id="echo840/OCRBench",
    split="test",
    columns=(_IMAGE, _col("question"), _col("answer", "list[str]"), _col("dataset"), _col("question_type")),
    doc_to_text=prompts.plain_prompt("", "", strip=True),
    doc_to_target=_get("answer"),
    max_new_tokens=128,
    metrics=("ocrbench_accuracy",),
    primary_metric="ocrbench_accuracy",
    process_results=R.ocrbench_process_results,
    aggregate=R.ocrbench_aggregate,
    sample_score=R.ocrbench_sample_score,
    extra_metrics=("ocrbench_doc_mean",),
    reference="lmms_eval/tasks/ocrbench/ocrbench.yaml, ocrbench/utils.py",
    notes="ocrbench_accuracy = right/1000 (equals the per-doc mean only on all 1000 docs); "
    "ocrbench_doc_mean = right/docs. Every lmms-eval release names echo840/OCRBench.",
)

VQAV2_VAL = LmmsTaskSpec(
    name="vqav2_val",
    dataset_id="lmms-lab-encoder/VQAv2",
    aliases=("lmms-lab/VQAv2",),
    split="validation",
    answer_column="answers",
    columns=_vqa_columns("list[dict]"),
    post_prompt=prompts.SHORT_ANSWER,
    doc_to_text=prompts.plain_prompt("", prompts.SHORT_ANSWER),
    doc_to_target=_get("answers"),
    max_new_tokens=16,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.vqa_process_results("vqav2"),
    sample_score=R.metric_value("exact_match"),
    reference="lmms_eval/tasks/vqav2/vqav2_val.yaml, _default_template_vqav2_yaml, vqav2/utils.py",
    notes="answers are dicts {answer, answer_confidence, answer_id}; 214k docs.",
)

VIZWIZ_VQA_VAL = LmmsTaskSpec(
    name="vizwiz_vqa_val",
    dataset_id="lmms-lab-encoder/VizWiz-VQA",
    aliases=("lmms-lab/VizWiz-VQA",),
    split="val",
    answer_column="answers",
    columns=_vqa_columns("list[str]"),
    post_prompt=prompts.VIZWIZ_POST,
    doc_to_text=prompts.plain_prompt("", prompts.VIZWIZ_POST, capitalize=True),
    doc_to_target=_get("answers"),
    max_new_tokens=None,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.vqa_process_results("evalai"),
    sample_score=R.metric_value("exact_match"),
    reference="lmms_eval/tasks/vizwiz_vqa/vizwiz_vqa_val.yaml, _default_template_vqa_yaml, vizwiz_vqa/utils.py",
    notes="YAML sets no max_new_tokens (only until 'ASSISTANT:'); the model wrapper's default applies.",
)

GQA = LmmsTaskSpec(
    name="gqa",
    dataset_id="lmms-lab-encoder/GQA",
    aliases=("lmms-lab/GQA",),
    config="testdev_balanced_instructions",
    split="testdev",
    columns=(_col("question"), _col("answer"), _col("imageId")),
    post_prompt=prompts.SHORT_ANSWER,
    doc_to_text=prompts.plain_prompt("", prompts.SHORT_ANSWER),
    doc_to_target=_get("answer"),
    max_new_tokens=16,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.gqa_process_results,
    sample_score=R.metric_value("exact_match"),
    image_join=ImageJoin(config="testdev_balanced_images", split="testdev", doc_key="imageId", image_key="id", image_column="image"),
    reference="lmms_eval/tasks/gqa/gqa.yaml, gqa/utils.py, api/metrics.py::exact_match_hf_evaluate",
    notes="exact_match with ignore_case and ignore_punctuation; images joined from testdev_balanced_images.",
)

SCIENCEQA_IMG = LmmsTaskSpec(
    name="scienceqa_img",
    dataset_id="lmms-lab-encoder/ScienceQA",
    aliases=("lmms-lab/ScienceQA",),
    config="ScienceQA-IMG",
    split="test",
    columns=(
        _col("image", "image", nullable=True),
        _col("question"),
        _col("choices", "list[str]"),
        _col("answer", "int"),
        _col("hint", "str", nullable=True),
    ),
    post_prompt=prompts.LETTER_ANSWER,
    doc_to_text=prompts.scienceqa_doc_to_text,
    doc_to_target=R.scienceqa_target,
    max_new_tokens=16,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.scienceqa_process_results,
    sample_score=R.metric_value("exact_match"),
    doc_to_image_columns=lambda doc: [] if doc.get("image") is None else ["image"],
    reference="lmms_eval/tasks/scienceqa/scienceqa_img.yaml, scienceqa/utils.py",
)

AI2D = LmmsTaskSpec(
    name="ai2d",
    dataset_id="lmms-lab-encoder/ai2d",
    aliases=("lmms-lab/ai2d",),
    split="test",
    columns=(_IMAGE, _col("question"), _col("options", "list[str]"), _col("answer", "str|int")),
    post_prompt=prompts.LETTER_ANSWER,
    doc_to_text=prompts.ai2d_doc_to_text,
    doc_to_target=R.ai2d_target,
    max_new_tokens=16,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.ai2d_process_results,
    sample_score=R.metric_value("exact_match"),
    reference="lmms_eval/tasks/ai2d/ai2d.yaml, ai2d/utils.py::MultiChoiceRegexFilter, api/metrics.py::exact_match_hf_evaluate",
    notes="flexible-extract filter (leading 'X.'), then exact_match ignore_case + ignore_punctuation.",
)

MMBENCH_EN_DEV = LmmsTaskSpec(
    name="mmbench_en_dev",
    dataset_id="lmms-lab-encoder/MMBench",
    aliases=("lmms-lab/MMBench",),
    config="en",
    split="dev",
    columns=(
        _IMAGE,
        _col("index", "str|int"),
        _col("question"),
        _col("answer"),
        _col("hint", "str", nullable=True),
        _col("A", "str", nullable=True),
        _col("B", "str", nullable=True),
        _col("C", "str", nullable=True),
        _col("D", "str", nullable=True),
        _col("category"),
        _col("L2-category"),
    ),
    post_prompt="\nAnswer with the option's letter from the given choices directly.",
    doc_to_text=prompts.mmbench_doc_to_text,
    doc_to_target=_get("answer"),
    max_new_tokens=1024,
    metrics=("gpt_eval_score",),
    primary_metric="gpt_eval_score",
    primary_scale="percent",
    process_results=R.mmbench_process_results,
    aggregate=R.mmbench_aggregate,
    sample_score=R.mmbench_sample_score,
    primary_is_sample_mean=False,
    judge="rule-based",
    reference="lmms_eval/tasks/mmbench/mmbench_en_dev.yaml, en_utils.py, mmbench_evals.py (eval_method='static')",
    notes="Circular over index % 1e6; unresolved answers use lmms-eval's static extract_mcq_answer path, not GPT.",
)

MMMU_VAL = LmmsTaskSpec(
    name="mmmu_val",
    dataset_id="lmms-lab-encoder/MMMU",
    aliases=("lmms-lab/MMMU",),
    split="validation",
    image_columns=_MMMU_IMAGES,
    columns=(
        _col("id"),
        _col("question"),
        _col("options"),
        _col("answer"),
        _col("question_type"),
        _col("image_1", "image"),
        *(_col(c, "image", nullable=True) for c in _MMMU_IMAGES[1:]),
    ),
    doc_to_text=prompts.mmmu_doc_to_text,
    doc_to_target=_get("answer"),
    max_new_tokens=128,
    metrics=("mmmu_acc",),
    primary_metric="mmmu_acc",
    process_results=R.mmmu_process_results,
    aggregate=R.mmmu_aggregate,
    sample_score=R.mmmu_sample_score,
    doc_to_image_columns=prompts.mmmu_image_columns,
    reference="lmms_eval/tasks/mmmu/mmmu_val.yaml, mmmu/utils.py, _task_utils/mmmu_mcq_utils.py",
    notes="Prompt instructions come from multiple_choice_prompt/open_ended_prompt (see prompts.py); "
    "accuracy rounded to 5 decimals; no-option answers draw a letter deterministically (see mmmu.py).",
)

HALLUSION_BENCH_IMAGE = LmmsTaskSpec(
    name="hallusion_bench_image",
    dataset_id="lmms-lab-encoder/HallusionBench",
    aliases=("lmms-lab/HallusionBench",),
    split="image",
    answer_column="gt_answer",
    columns=(
        _IMAGE,
        _col("question"),
        _col("gt_answer", "str|int"),
        _col("gt_answer_details"),
        _col("category"),
        _col("subcategory"),
        _col("set_id", "str|int"),
        _col("figure_id", "str|int"),
        _col("question_id", "str|int"),
    ),
    doc_to_text=prompts.plain_prompt("", ""),
    doc_to_target=_get("gt_answer_details"),
    max_new_tokens=128,
    metrics=("aAcc", "qAcc", "fAcc"),
    primary_metric="aAcc",
    primary_scale="percent",
    process_results=R.hallusion_process_results,
    aggregate=R.hallusion_aggregate,
    sample_score=R.hallusion_sample_score,
    judge="rule-based",
    reference="lmms_eval/tasks/hallusion_bench/hallusion_bench_image.yaml, evaluate_hb.py, utils.py",
    notes="lmms-eval grades with a GPT judge; here 'yes' in the answer means '1' (its _intern rule), "
    "grouped and scaled as the GPT path (percent, 4 decimals, fAcc without VS figure 0).",
)

REALWORLDQA = LmmsTaskSpec(
    name="realworldqa",
    dataset_id="lmms-lab-encoder/RealWorldQA",
    aliases=("lmms-lab/RealWorldQA",),
    split="test",
    columns=(_IMAGE, _col("question"), _col("answer")),
    doc_to_text=prompts.realworldqa_doc_to_text,
    doc_to_target=_get("answer"),
    max_new_tokens=16,
    metrics=("exact_match",),
    primary_metric="exact_match",
    process_results=R.realworldqa_process_results,
    sample_score=R.metric_value("exact_match"),
    reference="lmms_eval/tasks/realworldqa/realworldqa.yaml, realworldqa/utils.py, _task_utils/mcq_extract.py",
)

MMSTAR = LmmsTaskSpec(
    name="mmstar",
    dataset_id="Lin-Chen/MMStar",
    split="val",
    columns=(_IMAGE, _col("index", "str|int"), _col("question"), _col("answer"), _col("category"), _col("l2_category")),
    post_prompt=prompts.MMSTAR_POST,
    doc_to_text=prompts.mmstar_doc_to_text,
    doc_to_target=_get("answer"),
    max_new_tokens=None,
    metrics=R.MMSTAR_METRICS,
    primary_metric="average",
    process_results=R.mmstar_process_results,
    aggregate=R.mmstar_aggregate,
    sample_score=R.mmstar_sample_score,
    primary_is_sample_mean=False,
    reference="lmms_eval/tasks/mmstar/mmstar.yaml, _default_template_yaml, mmstar/utils.py",
    notes="Every metric is a macro mean over l2_category; YAML sets no generation_kwargs "
    "(the model wrapper's default applies). Every lmms-eval release names Lin-Chen/MMStar.",
)

LMMS_TASK_SPECS: dict[str, LmmsTaskSpec] = {
    s.name: s
    for s in (
        POPE,
        MME,
        TEXTVQA_VAL,
        DOCVQA_VAL,
        INFOVQA_VAL,
        CHARTQA,
        OCRBENCH,
        VQAV2_VAL,
        VIZWIZ_VQA_VAL,
        GQA,
        SCIENCEQA_IMG,
        AI2D,
        MMBENCH_EN_DEV,
        MMMU_VAL,
        HALLUSION_BENCH_IMAGE,
        REALWORLDQA,
        MMSTAR,
    )
}
