"""Every lmms-eval scorer in one namespace (pure functions, no torch).

The functions live in small modules by family, each naming the lmms-eval file it follows:
``vqa`` (VQA accuracy, ANLS, relaxed accuracy, exact match), ``yesno`` (POPE, MME,
HallusionBench), ``ocrbench``, ``multiple_choice`` (ScienceQA, AI2D, RealWorldQA, MMStar,
the shared letter extractor), ``mmbench`` (circular, rule-based) and ``mmmu``. This module
only gathers them.
"""

from .mmbench import can_infer, can_infer_option, can_infer_text, mmbench_aggregate, mmbench_circular, mmbench_resolve, mmbench_sample
from .mmmu import (
    eval_multi_choice,
    eval_open,
    extract_numbers,
    mmmu_aggregate,
    mmmu_sample,
    normalize_str,
    parse_multi_choice_response,
    parse_open_response,
)
from .multiple_choice import (
    ai2d_correct,
    ai2d_filter,
    extract_mcq_answer,
    mmstar_correct,
    mmstar_macro_mean,
    realworldqa_correct,
    scienceqa_correct,
)
from .ocrbench import ocrbench_aggregate, ocrbench_category_counts, ocrbench_correct, ocrbench_sample
from .vqa import anls, exact_match, levenshtein, relaxed_accuracy, vqa_accuracy
from .yesno import (
    hallusion_aggregate,
    hallusion_rule_judge,
    hallusion_sample,
    mme_aggregate,
    mme_category_scores,
    mme_parse,
    mme_sample,
    pope_aggregate,
    pope_sample,
)

__all__ = [
    "ai2d_correct",
    "ai2d_filter",
    "anls",
    "can_infer",
    "can_infer_option",
    "can_infer_text",
    "eval_multi_choice",
    "eval_open",
    "exact_match",
    "extract_mcq_answer",
    "extract_numbers",
    "hallusion_aggregate",
    "hallusion_rule_judge",
    "hallusion_sample",
    "levenshtein",
    "mmbench_aggregate",
    "mmbench_circular",
    "mmbench_resolve",
    "mmbench_sample",
    "mme_aggregate",
    "mme_category_scores",
    "mme_parse",
    "mme_sample",
    "mmmu_aggregate",
    "mmmu_sample",
    "mmstar_correct",
    "mmstar_macro_mean",
    "normalize_str",
    "ocrbench_aggregate",
    "ocrbench_category_counts",
    "ocrbench_correct",
    "ocrbench_sample",
    "parse_multi_choice_response",
    "parse_open_response",
    "pope_aggregate",
    "pope_sample",
    "realworldqa_correct",
    "relaxed_accuracy",
    "scienceqa_correct",
    "vqa_accuracy",
]
