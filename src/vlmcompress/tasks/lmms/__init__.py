"""Scoring of real LVLM benchmarks, faithful to lmms-eval 0.7.x (pure Python, no torch).

Seventeen lmms-eval tasks are declared in :data:`LMMS_TASK_SPECS` (``specs.py``): where
their data live, how the prompt is built, and how a raw model response is cleaned, scored
per sample and aggregated into lmms-eval's numbers. The scorers are split by family:
``normalize`` (think-block stripping, EvalAI answer processor), ``vqa`` (VQA accuracy,
ANLS, relaxed accuracy, exact match), ``yesno`` (POPE, MME, HallusionBench), ``ocrbench``,
``multiple_choice`` (ScienceQA, AI2D, RealWorldQA, MMStar, the shared letter extractor),
``mmbench`` (circular, rule-based) and ``mmmu``. Each module docstring names the lmms-eval
file it follows. lmms-eval itself is neither imported nor needed.
"""

from .normalize import clean_response, evalai_normalize, strip_reasoning_blocks, vqav2_normalize
from .specs import LMMS_TASK_SPECS, Column, ImageJoin, LmmsTaskSpec, aggregate_all, column_value_ok
from .vqa import anls, exact_match, relaxed_accuracy, vqa_accuracy

__all__ = [
    "LMMS_TASK_SPECS",
    "Column",
    "ImageJoin",
    "LmmsTaskSpec",
    "aggregate_all",
    "anls",
    "clean_response",
    "column_value_ok",
    "evalai_normalize",
    "exact_match",
    "relaxed_accuracy",
    "strip_reasoning_blocks",
    "vqa_accuracy",
    "vqav2_normalize",
]
