"""``report.md``: score per task per setting with 95% intervals, overall performance and
loyalty against the baseline, a summary per method family, trust figures, and efficiency
next to the baseline.

Every string from a user, a model or a dataset is escaped: in code spans (settings) by a
backtick fence longer than any run of backticks inside, elsewhere with backslashes and
HTML entities; table-breaking pipes and newlines, control characters and lone surrogates
never reach the file as they are."""

from __future__ import annotations

import math
import re
from typing import Any

from .summary import (
    BASELINE,
    cell_counts,
    family_summary,
    is_significant,
    mean_efficiency,
    model_grids,
    op_and_loyalty,
    overall_generalization_of,
    prefill_flops_of,
    primary_metric,
    primary_with_ci,
    speedup,
    timing_caveats,
)
from .text import clean

MAX_SETTING = 2000  # characters of a setting string shown


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (int, bool)):
        return str(x)
    return _md_text(x, 40)


def _bytes(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    x = float(x)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.1f} {unit}" if unit != "B" else f"{int(x)} B"
        x /= 1024
    return str(x)


def _flops(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


_MD_SPECIAL = str.maketrans({"\\": "\\\\", "`": "\\`", "*": "\\*", "[": "\\[", "]": "\\]", "|": "\\|", "<": "&lt;", ">": "&gt;", "&": "&amp;"})
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword ones never emphasise


def _md_text(text: Any, limit: int | None = 400) -> str:
    """Plain text for a table cell: markup characters escaped, one line."""
    return _EDGE_UNDERSCORE.sub(r"\\_", clean(text, limit).translate(_MD_SPECIAL))


def _md_code(text: Any, limit: int | None = MAX_SETTING) -> str:
    """A code span for a table cell holding any string: the fence is one backtick longer
    than the longest run of backticks inside (CommonMark: backslashes do not escape in a
    code span), padded with spaces when the text holds a backtick; pipes escaped for the
    table."""
    body = clean(text, limit).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    if longest:
        body = f" {body} "
    elif not body.strip():
        return "` `"
    fence = "`" * (longest + 1)
    return f"{fence}{body}{fence}"


def _md_cell(text: str) -> str:
    """Escape what would break a Markdown table (kept for callers of the old name)."""
    return _md_text(text, None)


def _counts(cell: dict) -> str:
    n, n_err = cell_counts(cell)
    return f" ({n}/{n + n_err})" if n_err else ""


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
    cells = results.get("cells") or []
    out = ["# vlmcompress report", ""]
    cfg = results.get("config") if isinstance(results.get("config"), dict) else {}
    ver = results.get("versions") if isinstance(results.get("versions"), dict) else {}
    out.append(
        f"Run of {_md_text(results.get('date', '?'), 80)} · seed {_md_text(cfg.get('seed'), 40)} · limit {_md_text(cfg.get('limit'), 40)} per task · batch {_md_text(cfg.get('batch_size'), 40)} · "
        f"torch {_md_text(ver.get('torch', '?'), 40)} · transformers {_md_text(ver.get('transformers', '?'), 40)} · device {_md_text(ver.get('device', '?'), 80)}"
    )
    out.append("")
    out.append("Each task shows its primary metric (named under the task; accuracy on 0–1 for the synthetic suite, the benchmark's own scale otherwise) with a 95% bootstrap interval; "
               "`*` marks a change from the baseline that McNemar's exact test on per-sample correctness finds significant (p < 0.05); "
               "`(k/n)` marks a cell where only k of its n samples were scored (the others errored). "
               "Loyalty is the share of predictions identical to the baseline's on the same samples. OP is EffiVLM-Bench's overall performance, the root mean square of per-task retention (score / baseline score); "
               "OG its generalization, the coefficient of variation of that retention (lower = more uniform).")
    out.append("")
    for model, mg in model_grids(cells).items():
        tasks, settings, grid, mcells = mg.tasks, mg.settings, mg.grid, mg.cells
        out += [f"## Model {_md_code(model, 300)}", "", "### Scores", ""]
        metric_of = {t: primary_metric(next(c for c in mcells if c["task"] == t)) for t in tasks}
        out.append("| setting | " + " | ".join(f"{_md_text(t, 80)} ({_md_text(metric_of[t], 60)})" for t in tasks) + " | OP | OG | loyalty |")
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
                row.append(f"{_fmt(acc)}{star} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]{_counts(c)}")
            op, loyalty = op_and_loyalty(mg, s)
            out.append(f"| {_md_code(s)} | " + " | ".join(row) + f" | {_fmt(op)} | {_fmt(overall_generalization_of(mg, s))} | {_fmt(loyalty)} |")
        out.append("")
        families = family_summary(mg)
        if families:
            out += ["### Per method family (the setting with the highest OP)", "", "| family | settings | best | OP | weight bytes | KV bytes/sample | prefill FLOPs |", "|---|---|---|---|---|---|---|"]
            for r in families:
                if r.best is None:
                    out.append(f"| {r.family} | {len(r.settings)} | – | – | – | – | – |")
                    continue
                sc = mg.cells_of(r.best)
                out.append(
                    f"| {r.family} | {len(r.settings)} | {_md_code(r.best)} | {_fmt(r.best_op)} | {_bytes(mean_efficiency(sc, 'weight_bytes'))} | "
                    f"{_bytes(mean_efficiency(sc, 'kv_bytes'))} | {_flops(prefill_flops_of(mg, r.best))} |"
                )
            out.append("")
        out += ["### Efficiency (median over batches; speed-up against the baseline in the same run)", ""]
        caveats = timing_caveats(mg)
        if caveats:
            out += ["Timing: " + "; ".join(_md_text(c) for c in caveats) + ".", ""]
        out.append("| setting | prefill s/batch | decode s/token | samples/s | peak memory | weight bytes | KV bytes/sample | prefill FLOPs/sample |")
        out.append("|---|---|---|---|---|---|---|---|")
        bc = mg.baseline_cells()
        for s in settings:
            sc = mg.cells_of(s)
            if not sc:
                continue
            pf, bpf = mean_efficiency(sc, "prefill_s"), mean_efficiency(bc, "prefill_s")
            dc, bdc = mean_efficiency(sc, "decode_s_per_token"), mean_efficiency(bc, "decode_s_per_token")
            out.append(
                f"| {_md_code(s)} | {_fmt(pf, 4)} ({_ratio(bpf, pf)}) | {_fmt(dc, 5)} ({_ratio(bdc, dc)}) | {_fmt(mean_efficiency(sc, 'samples_per_s'), 1)} | "
                f"{_bytes(mean_efficiency(sc, 'peak_memory_bytes'))} | {_bytes(mean_efficiency(sc, 'weight_bytes'))} | {_bytes(mean_efficiency(sc, 'kv_bytes'))} | "
                f"{_flops(prefill_flops_of(mg, s))} |"
            )
        out.append("")
        columns = [col for col in TRUST_COLUMNS if any(t == col[0] for t in tasks)]
        if columns:
            out += ["### Trust", "", "| setting | " + " | ".join(col[2] for col in columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for s in settings:
                vals = []
                for task, metric, _, shift in columns:
                    c, b = grid.get((s, task)), grid.get((BASELINE, task))
                    value = (c.get("scores") or {}).get(metric) if c else None
                    if shift:
                        base = (b.get("scores") or {}).get(metric) if b else None
                        value = value - base if _number(value) and _number(base) else None
                    vals.append(_fmt(value))
                out.append(f"| {_md_code(s)} | " + " | ".join(vals) + " |")
            out.append("")
        flips = [c for c in mcells if c["setting"] != BASELINE]
        if flips:
            out += ["### Flips against the baseline", "", "| setting | task | right→wrong | wrong→right | McNemar p | scored | errored |", "|---|---|---|---|---|---|---|"]
            for c in flips:
                d = c.get("loyalty_detail") or {}
                n, n_err = cell_counts(c)
                out.append(
                    f"| {_md_code(c['setting'])} | {_md_text(c['task'], 80)} | {_fmt(d.get('right_to_wrong', '–'))} | {_fmt(d.get('wrong_to_right', '–'))} | "
                    f"{_fmt(d.get('mcnemar_p'))} | {n} | {n_err} |"
                )
            out.append("")
    failed = results.get("failed_cells")
    if isinstance(failed, list) and failed:
        out += ["## Failed cells", "", "| model | setting | task | error |", "|---|---|---|---|"]
        for f in failed:
            if isinstance(f, dict):
                out.append(f"| {_md_code(f.get('model'), 300)} | {_md_code(f.get('setting'))} | {_md_text(f.get('task'), 80)} | {_md_text(f.get('error'))} |")
        out.append("")
    return "\n".join(out) + "\n"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
