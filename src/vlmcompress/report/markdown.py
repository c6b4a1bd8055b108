"""``report.md``: score per task per setting with 95% intervals, overall performance and
loyalty against the baseline, trust figures, and efficiency next to the baseline."""

from __future__ import annotations

import math
from typing import Any

from .summary import BASELINE, is_significant, mean_efficiency, model_grids, op_and_loyalty, overall_generalization_of, primary_metric, primary_with_ci, speedup


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _bytes(x: Any) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.1f} {unit}" if unit != "B" else f"{int(x)} B"
        x /= 1024
    return str(x)


def _md_cell(text: str) -> str:
    """Escape what would break a Markdown table (model output never reaches the report,
    but setting strings are user input)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(base: Any, value: Any) -> str:
    x = speedup(base, value)
    return "–" if x is None else f"{x:.2f}×"


# (task, metric, column label, shown as the shift from the baseline): the trust figures
# LVLM-Compress-Bench looks at (hallucination, yes-bias, counterfactual bias)
TRUST_COLUMNS = [
    ("synth_exists", "f1", "synthetic POPE F1", False),
    ("synth_exists", "adversarial_accuracy", "adversarial accuracy", False),
    ("synth_exists", "yes_ratio", "yes-ratio shift", True),
    ("pope", "pope_f1_score", "POPE F1", False),
    ("pope", "pope_pred_yes_ratio", "POPE yes-ratio shift", True),
    ("hallusion_bench_image", "aAcc", "HallusionBench aAcc", False),
    ("hallusion_bench_image", "qAcc", "qAcc", False),
    ("hallusion_bench_image", "fAcc", "fAcc", False),
    ("synth_counterfactual", "consistency", "counterfactual consistency", False),
    ("social_counterfactuals", "consistency", "SocialCounterfactuals consistency", False),
    ("social_counterfactuals", "competency_rate_spread", "competency spread", False),
    ("social_counterfactuals", "max_toxicity", "MaxToxicity", False),
    ("social_counterfactuals", "max_toxicity", "MaxToxicity shift", True),
]


def render_markdown(results: dict[str, Any]) -> str:
    cells = results.get("cells", [])
    out = ["# vlmcompress report", ""]
    cfg = results.get("config", {})
    ver = results.get("versions", {})
    out.append(
        f"Run of {results.get('date', '?')} · seed {cfg.get('seed')} · limit {cfg.get('limit')} per task · batch {cfg.get('batch_size')} · "
        f"torch {ver.get('torch', '?')} · transformers {ver.get('transformers', '?')} · device {ver.get('device', '?')}"
    )
    out.append("")
    out.append("Each task shows its primary metric (named under the task; accuracy on 0–1 for the synthetic suite, the benchmark's own scale otherwise) with a 95% bootstrap interval; "
               "`*` marks a change from the baseline that McNemar's exact test on per-sample correctness finds significant (p < 0.05). "
               "Loyalty is the share of predictions identical to the baseline's on the same samples. OP is EffiVLM-Bench's overall performance, the root mean square of per-task retention (score / baseline score); "
               "OG its generalization, the coefficient of variation of that retention (lower = more uniform).")
    out.append("")
    for model, mg in model_grids(cells).items():
        tasks, settings, grid, mcells = mg.tasks, mg.settings, mg.grid, mg.cells
        out += [f"## Model `{_md_cell(model)}`", "", "### Scores", ""]
        metric_of = {t: primary_metric(next(c for c in mcells if c["task"] == t)) for t in tasks}
        out.append("| setting | " + " | ".join(f"{_md_cell(t)} ({_md_cell(metric_of[t])})" for t in tasks) + " | OP | OG | loyalty |")
        out.append("|---" * (len(tasks) + 4) + "|")
        for s in settings:
            row = []
            for t in tasks:
                c = grid.get((s, t))
                if c is None:
                    row.append("…")
                    continue
                acc, lo, hi = primary_with_ci(c)
                star = "*" if is_significant(c, s) else ""
                row.append(f"{_fmt(acc)}{star} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]")
            op, loyalty = op_and_loyalty(mg, s)
            out.append(f"| `{_md_cell(s)}` | " + " | ".join(row) + f" | {_fmt(op)} | {_fmt(overall_generalization_of(mg, s))} | {_fmt(loyalty)} |")
        out.append("")
        out += ["### Efficiency (median over batches; speed-up against the baseline in the same run)", ""]
        out.append("| setting | prefill s/batch | decode s/token | samples/s | peak memory | weight bytes | KV bytes/sample |")
        out.append("|---|---|---|---|---|---|---|")
        bc = mg.baseline_cells()
        for s in settings:
            sc = mg.cells_of(s)
            if not sc:
                continue
            pf, bpf = mean_efficiency(sc, "prefill_s"), mean_efficiency(bc, "prefill_s")
            dc, bdc = mean_efficiency(sc, "decode_s_per_token"), mean_efficiency(bc, "decode_s_per_token")
            out.append(
                f"| `{_md_cell(s)}` | {_fmt(pf, 4)} ({_ratio(bpf, pf)}) | {_fmt(dc, 5)} ({_ratio(bdc, dc)}) | {_fmt(mean_efficiency(sc, 'samples_per_s'), 1)} | "
                f"{_bytes(mean_efficiency(sc, 'peak_memory_bytes'))} | {_bytes(mean_efficiency(sc, 'weight_bytes'))} | {_bytes(mean_efficiency(sc, 'kv_bytes'))} |"
            )
        out.append("")
        columns = [col for col in TRUST_COLUMNS if any(t == col[0] for t in tasks)]
        if columns:
            out += ["### Trust", "", "| setting | " + " | ".join(col[2] for col in columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for s in settings:
                vals = []
                for task, metric, _, shift in columns:
                    c, b = grid.get((s, task)), grid.get((BASELINE, task))
                    value = c["scores"].get(metric) if c else None
                    if shift:
                        base = b["scores"].get(metric) if b else None
                        value = value - base if value is not None and base is not None else None
                    vals.append(_fmt(value))
                out.append(f"| `{_md_cell(s)}` | " + " | ".join(vals) + " |")
            out.append("")
        flips = [c for c in mcells if c["setting"] != BASELINE]
        if flips:
            out += ["### Flips against the baseline", "", "| setting | task | right→wrong | wrong→right | McNemar p | errors |", "|---|---|---|---|---|---|"]
            for c in flips:
                d = c.get("loyalty_detail") or {}
                out.append(f"| `{_md_cell(c['setting'])}` | {c['task']} | {d.get('right_to_wrong', '–')} | {d.get('wrong_to_right', '–')} | {_fmt(d.get('mcnemar_p'))} | {c.get('n_errors', 0)} |")
            out.append("")
    return "\n".join(out) + "\n"
