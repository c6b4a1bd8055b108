"""``report.html``: per model, one table of settings × tasks (scores with intervals and
significance, OP, OG, loyalty, bytes, FLOPs, speed-ups; it scrolls sideways inside its own
box, the setting column staying in view), a summary per method family, Pareto plots of OP
against each efficiency axis that varies across settings, and the first disagreements
with the baseline, each with the sample's image and question.

Every string that came from a model, a dataset or a user (predictions, golds, questions,
setting specs, model and task names) goes through :func:`html.escape` after
:func:`~vlmcompress.report.text.clean`; the page has no script and a Content-Security-Policy
that allows none.  Plot labels are the settings' row numbers (never user text), drawn with
math text off.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from typing import Any

from .samples import sample_views
from .summary import (
    BASELINE,
    cell_counts,
    family_summary,
    is_significant,
    mean_efficiency,
    method_names,
    model_grids,
    op_and_loyalty,
    overall_generalization_of,
    prefill_flops_of,
    primary_metric,
    primary_score,
    primary_with_ci,
    setting_family,
    speedup,
    timing_caveats,
)
from .text import clean

MAX_TEXT = 400  # characters of a prediction, gold or question shown
MAX_SETTING = 400  # characters of a setting string shown (the full one is in results.json)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222;line-height:1.4}
h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.scroll{overflow-x:auto;width:fit-content;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:13px}
.scroll table{margin:0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
th.l,td.l{text-align:left}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.sticky{position:sticky;left:0;background:#fff;z-index:1;box-shadow:1px 0 0 #ccc}
th.sticky{background:#f3f3f3}
td.setting{text-align:left;min-width:10em;max-width:22em;overflow-wrap:break-word}
td.op{font-weight:600}
table.grid tr>:nth-child(12){border-left:3px double #aaa}  /* where the tasks begin */
td.setting code{white-space:normal}
td.bad{background:#fde2e2;white-space:nowrap} td.good{background:#e2f5e2;white-space:nowrap}
td.right{color:#17692a} td.wrong{color:#a32020}
td.text{text-align:left;max-width:22em;overflow-wrap:anywhere;white-space:pre-wrap}
tr.group td{background:#f7f7fb;text-align:left;font-weight:600}
code{font-size:12px}
small{color:#555}
.err{color:#a33;font-weight:600}
.note{color:#555;font-size:14px}
.plots{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}
figcaption{font-size:13px;color:#555;max-width:560px}
img.plot{max-width:100%;height:auto}
img.thumb{width:96px;height:auto;image-rendering:pixelated;border:1px solid #ddd}
details.disagree{margin:.3em 0;border:1px solid #ddd;border-radius:4px;padding:.2em .6em}
details.disagree summary{cursor:pointer;padding:.3em 0}
details.disagree[open] summary{border-bottom:1px solid #eee;margin-bottom:.4em}
"""


def _e(x: Any, limit: int | None = None) -> str:
    return html.escape(clean(x, limit), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return _e(x)
    if isinstance(x, (int, float)):
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
    return _e(x, 40)


def _bytes(x: Any) -> str:
    if not _finite(x):
        return "–"
    x = float(x)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.2f} {unit}"
        x /= 1024
    return "–"


def _flops(x: Any) -> str:
    if not _finite(x):
        return "–"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def _ratio(x: Any) -> str:
    return f"{x:.2f}×" if _finite(x) else "–"


def _code(setting: Any) -> str:
    """A setting in a code element, with line-break opportunities after its commas and
    plus signs (a long stack wraps between knobs, not inside one)."""
    return "<code>" + _e(setting, MAX_SETTING).replace(",", ",<wbr>").replace("+", "+<wbr>") + "</code>"


def _counts_mark(cell: dict) -> str:
    """A small ``scored/total`` mark when some of the cell's samples errored."""
    n, n_err = cell_counts(cell)
    if not n_err:
        return ""
    return f" <small class='err' title='{n} scored, {n_err} errored'>{n}/{n + n_err}</small>"


# ----------------------------------------------------------------------------- plots

@dataclass
class _Axis:
    key: str
    title: str  # the x-axis label
    unit: str  # "bytes", "flops" or "ratio"
    lower_is_better: bool


_AXES = (
    _Axis("weight_bytes", "weight bytes", "bytes", True),
    _Axis("kv_bytes", "KV-cache bytes per sample", "bytes", True),
    _Axis("prefill_flops", "prefill FLOPs per sample", "flops", True),
    _Axis("prefill_speedup", "measured prefill speed-up against the baseline (×)", "ratio", False),
)


def _varies(xs: list[float]) -> bool:
    return len(xs) >= 2 and max(xs) - min(xs) > 1e-9 * max(abs(v) for v in xs)


def _scale(axis: _Axis, xs: list[float]) -> tuple[float, str]:
    top = max(abs(v) for v in xs)
    if axis.unit == "bytes":
        for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if top >= div:
                return div, f"{axis.title} ({unit})"
        return 1.0, f"{axis.title} (B)"
    if axis.unit == "flops":
        for div, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
            if top >= div:
                return div, axis.title.replace("FLOPs", unit)
        return 1.0, axis.title
    return 1.0, axis.title


def pareto_front(points: list[tuple[int, float, float]], lower_is_better: bool) -> list[tuple[int, float, float]]:
    """The points no other point beats on both x (smaller, or larger when not
    ``lower_is_better``) and OP (larger), in x order."""
    ordered = sorted(points, key=lambda p: (p[1] if lower_is_better else -p[1], -p[2]))
    front, best = [], -math.inf
    for p in ordered:
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def _pareto_png(points: list[tuple[int, float, float]], axis: _Axis) -> str | None:
    """A base64 PNG of OP against one axis: each point labelled with its settings' row
    numbers (points at the same place share one label), labels moved until they overlap
    neither each other nor the points, the Pareto front drawn as a dashed line."""
    pts = [(i, x, y) for i, x, y in points if _finite(x) and _finite(y)]
    if len(pts) < 2 or not _varies([x for _, x, _ in pts]):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    div, xlabel = _scale(axis, [x for _, x, _ in pts])
    with matplotlib.rc_context({"text.usetex": False}):
        fig, ax = plt.subplots(figsize=(5.6, 3.9), dpi=100)
        try:
            front = pareto_front(pts, axis.lower_is_better)
            on_front = {i for i, _, _ in front}
            groups: dict[tuple[float, float], list[int]] = {}
            for i, x, y in pts:
                groups.setdefault((round(x / div, 9), round(y, 6)), []).append(i)
            for (x, y), ids in groups.items():
                hit = any(i in on_front for i in ids)
                ax.scatter([x], [y], s=28, color="#1f77b4" if hit else "white", edgecolors="#1f77b4", zorder=3)
            ax.plot([p[1] / div for p in front], [p[2] for p in front], linestyle="--", linewidth=1, color="#1f77b4", zorder=2)
            if axis.unit == "ratio":
                ax.axvline(1.0, color="#999", linewidth=0.8, zorder=1)
            ax.set_xlabel(xlabel, parse_math=False)
            ax.set_ylabel("overall performance (OP)", parse_math=False)
            ax.grid(alpha=0.3)
            ax.margins(x=0.12, y=0.15)
            fig.tight_layout()
            _place_labels(fig, ax, [(x, y, ",".join(str(i) for i in sorted(ids))) for (x, y), ids in groups.items()])
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# offsets (points) tried in turn for a label: right, above, left, below, then further out
_OFFSETS = [(5, 4), (5, -11), (-9, 4), (-9, -11), (0, 10), (0, -16), (12, 12), (12, -18), (-16, 12), (-16, -18), (5, 20), (5, -26), (20, 0), (-24, 0)]


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]]) -> None:
    """Put each label at the first offset whose box overlaps no placed label and no point."""
    renderer = fig.canvas.get_renderer()
    taken = []
    for x, y in [(lx, ly) for lx, ly, _ in labels]:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 4, py - 4, px + 4, py + 4))  # the marker

    def free(box: tuple[float, float, float, float]) -> bool:
        return all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken)

    for x, y, text in sorted(labels, key=lambda t: (t[0], t[1])):
        ann, box, chosen = None, None, _OFFSETS[0]
        for dx, dy in _OFFSETS:
            if ann is not None:
                ann.remove()
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, parse_math=False, zorder=4)
            bb = ann.get_window_extent(renderer)
            box, chosen = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1), (dx, dy)
            if free(box):
                break
        if chosen != _OFFSETS[0]:  # a label moved away from its usual place gets a leader line
            ann.remove()
            ax.annotate(
                text, (x, y), xytext=chosen, textcoords="offset points", fontsize=8, parse_math=False, zorder=4,
                arrowprops={"arrowstyle": "-", "color": "#999", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3},
            )
        taken.append(box)


# ----------------------------------------------------------------------------- page

def render_html(results: dict[str, Any], disagreements: dict[tuple[str, str, str], list[dict]] | None = None) -> str:
    """``disagreements``: per (model, setting, task), sample rows whose prediction differs
    from the baseline's, each with ``sample_id``, ``prediction``, ``baseline`` and ``gold``."""
    cells = results.get("cells") or []
    cfg = results.get("config") if isinstance(results.get("config"), dict) else {}
    ver = results.get("versions") if isinstance(results.get("versions"), dict) else {}
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>vlmcompress report</title><style>{_STYLE}</style></head><body>",
        "<h1>vlmcompress report</h1>",
        f"<p class='note'>Run of {_e(results.get('date', '?'), 80)} · seed {_e(cfg.get('seed'), 40)} · limit {_e(cfg.get('limit'), 40)} per task · "
        f"batch {_e(cfg.get('batch_size'), 40)} · torch {_e(ver.get('torch', '?'), 40)} · transformers {_e(ver.get('transformers', '?'), 40)} · device {_e(ver.get('device', '?'), 80)}</p>",
        "<p class='note'>Each task shows its primary metric (named under the task; accuracy on 0–1 for the synthetic suite) with a 95% bootstrap interval; "
        "red cells are drops the paired McNemar test finds significant (p &lt; 0.05), green cells significant gains; "
        "<span class='err'>k/n</span>: only k of the cell's n samples were scored, the others errored. "
        "Loyalty: share of predictions identical to the baseline's. OP: root mean square of per-task retention (score / baseline score); "
        "OG: its coefficient of variation (lower = more uniform). Weights and KV bytes as held at 16 bits; FLOPs per sample; speed-ups measured against the baseline in the same run.</p>",
    ]
    for model, mg in model_grids(cells).items():
        tasks, settings, grid = mg.tasks, mg.settings, mg.grid
        bc = mg.baseline_cells()
        number = {s: k + 1 for k, s in enumerate(settings)}
        out.append(f"<h2>Model <code>{_e(model, 300)}</code></h2>")
        metric_of = {t: primary_metric(next(c for c in mg.cells if c["task"] == t)) for t in tasks}
        out.append(
            "<p class='note'>One row per setting: OP, OG, loyalty and efficiency first, then each task's score "
            "(the table scrolls sideways inside its box when it is wider than the page; the setting column stays in view).</p>"
        )
        out.append("<div class='scroll'><table class='grid'>")
        out.append(
            "<tr><th>#</th><th class='l sticky'>setting</th><th class='l'>family</th>"
            "<th>OP</th><th>OG</th><th>loyalty</th><th>weights</th><th>KV / sample</th><th>prefill FLOPs</th><th>prefill ×</th><th>decode ×</th>"
            + "".join(f"<th>{_e(t, 80)}<br><small>{_e(metric_of[t], 60)}</small></th>" for t in tasks)
            + "</tr>"
        )
        axis_points: dict[str, list[tuple[int, float, float]]] = {a.key: [] for a in _AXES}
        base_pf, base_dc = mean_efficiency(bc, "prefill_s"), mean_efficiency(bc, "decode_s_per_token")
        for s in settings:
            tds = []
            for t in tasks:
                c, b = grid.get((s, t)), grid.get((BASELINE, t))
                if c is None:
                    tds.append("<td class='num'>…</td>")
                    continue
                acc, lo, hi = primary_with_ci(c)
                cls, title = "num", ""
                p = (c.get("loyalty_detail") or {}).get("mcnemar_p")
                if is_significant(c, s) and b is not None and _finite(acc):
                    base_score = primary_score(b)
                    cls = ("bad" if acc < (base_score if _finite(base_score) else 0) else "good")  # the colour says it
                if s != BASELINE and _finite(p):
                    title = f" title='McNemar p = {p:.3g}'"
                tds.append(f"<td class='{cls}'{title}>{_num(acc)}{_counts_mark(c)}<br><small>[{_num(lo, 2)}, {_num(hi, 2)}]</small></td>")
            sc = mg.cells_of(s)
            op, loyalty = op_and_loyalty(mg, s)
            w, kv, fl = mean_efficiency(sc, "weight_bytes"), mean_efficiency(sc, "kv_bytes"), prefill_flops_of(mg, s)
            pf = speedup(base_pf, mean_efficiency(sc, "prefill_s"))
            dc = speedup(base_dc, mean_efficiency(sc, "decode_s_per_token"))
            for key, x in (("weight_bytes", w), ("kv_bytes", kv), ("prefill_flops", fl), ("prefill_speedup", pf)):
                if _finite(x) and _finite(op):
                    axis_points[key].append((number[s], float(x), float(op)))
            out.append(
                f"<tr><td class='num'>{number[s]}</td><td class='setting sticky'>{_code(s)}</td><td class='l'>{_e(setting_family(s))}</td>"
                f"<td class='num op'>{_num(op)}</td><td class='num'>{_num(overall_generalization_of(mg, s))}</td><td class='num'>{_num(loyalty)}</td>"
                f"<td class='num'>{_bytes(w)}</td><td class='num'>{_bytes(kv)}</td><td class='num'>{_flops(fl)}</td><td class='num'>{_ratio(pf)}</td><td class='num'>{_ratio(dc)}</td>"
                f"{''.join(tds)}</tr>"
            )
        out.append("</table></div>")
        caveats = timing_caveats(mg)
        if caveats:
            out.append("<p class='note'><b>Timing:</b> " + "; ".join(_e(c) for c in caveats) + ".</p>")
        out += _family_table(mg, number)
        out += _plots(axis_points)
        if disagreements:
            out += _disagreement_table(model, disagreements, cfg, number)
    out += _failed_cells(results.get("failed_cells"))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _family_table(mg: Any, number: dict[str, int]) -> list[str]:
    rows = family_summary(mg)
    if not rows:
        return []
    out = [
        "<h3>Per method family</h3>",
        "<div class='scroll'><table><tr><th class='l'>family</th><th class='l'>settings (#)</th><th class='l'>best by OP</th><th>OP</th><th>weights</th><th>KV / sample</th><th>prefill FLOPs</th></tr>",
    ]
    for r in rows:
        members = ", ".join(str(number[s]) for s in r.settings)
        if r.best is None:
            best = "<td class='l'>–</td><td>–</td><td>–</td><td>–</td><td>–</td>"
        else:
            sc = mg.cells_of(r.best)
            names = "+".join(method_names(r.best))
            best = (
                f"<td class='l'>#{number[r.best]}{f' <code>{_e(names, 120)}</code>' if names else ''}</td><td class='num'>{_num(r.best_op)}</td>"
                f"<td class='num'>{_bytes(mean_efficiency(sc, 'weight_bytes'))}</td><td class='num'>{_bytes(mean_efficiency(sc, 'kv_bytes'))}</td>"
                f"<td class='num'>{_flops(prefill_flops_of(mg, r.best))}</td>"
            )
        out.append(f"<tr><td class='l'>{_e(r.family)}</td><td class='l'>{members}</td>{best}</tr>")
    out.append("</table></div>")
    return out


def _plots(axis_points: dict[str, list[tuple[int, float, float]]]) -> list[str]:
    figures = []
    for axis in _AXES:
        try:
            png = _pareto_png(axis_points[axis.key], axis)
        except Exception:  # noqa: BLE001 - a plot that cannot be drawn is left out, never the report
            png = None
        if png:
            better = "left" if axis.lower_is_better else "right"
            figures.append(
                f"<figure><img class='plot' alt='OP against {_e(axis.title)}' src='data:image/png;base64,{png}'>"
                f"<figcaption>OP against {_e(axis.title)}; better is up and to the {better}; filled points and the dashed line are the Pareto front. "
                "Numbers are the # column of the table above.</figcaption></figure>"
            )
    if not figures:
        return []
    return ["<h3>Trade-offs</h3>", "<div class='plots'>", *figures, "</div>"]


def _disagreement_table(model: str, disagreements: dict, cfg: dict, number: dict[str, int]) -> list[str]:
    shown = [(k, rows) for k, rows in disagreements.items() if k[0] == model and rows]
    if not shown:
        return []
    wanted: dict[str, dict[str, Any]] = {}
    for (_, _, t), rows in shown:
        for r in rows:
            wanted.setdefault(t, {})[str(r.get("sample_id"))] = r.get("gold")
    try:
        views = sample_views(cfg, wanted)
    except Exception:  # noqa: BLE001 - pictures are a help, never a failure
        views = {}
    by_setting: dict[str, list[tuple[str, list[dict]]]] = {}
    for (_, s, t), rows in shown:
        by_setting.setdefault(s, []).append((t, rows))
    out = [
        "<h3>Where settings disagree with the baseline (first few per cell)</h3>",
        "<p class='note'>One block per setting, closed: open the ones you want to read. Answers that match the gold "
        "(as the task compares them) are green, others red.</p>",
    ]
    head = "<tr><th class='l'>image</th><th class='l'>question</th><th class='l'>gold</th><th class='l'>baseline</th><th class='l'>this setting</th><th class='l'>sample</th></tr>"
    for s, cells in by_setting.items():
        num = number.get(s)
        n_rows = sum(len(rows) for _, rows in cells)
        tasks = ", ".join(_e(t, 80) for t, _ in cells)
        out.append(
            f"<details class='disagree'><summary>{'#' + str(num) + ' ' if num else ''}{_code(s)} · "
            f"{n_rows} shown in {len(cells)} task{'s' if len(cells) != 1 else ''}: {tasks}</summary>"
        )
        out.append(f"<div class='scroll'><table>{head}")
        for t, rows in cells:
            out.append(f"<tr class='group'><td colspan='6'>{_e(t, 80)}</td></tr>")
            for r in rows:
                view = views.get((t, str(r.get("sample_id"))))
                img = f"<img class='thumb' alt='sample image' src='{view.thumbnail}'>" if view and view.thumbnail else ""
                question = _e(view.question, MAX_TEXT) if view and view.question else "<small>–</small>"
                out.append(
                    f"<tr><td>{img}</td><td class='text'>{question}</td><td class='text'>{_e(r.get('gold'), MAX_TEXT)}</td>"
                    f"<td class='text{_verdict(t, r.get('baseline'), r.get('gold'))}'>{_e(r.get('baseline'), MAX_TEXT)}</td>"
                    f"<td class='text{_verdict(t, r.get('prediction'), r.get('gold'))}'>{_e(r.get('prediction'), MAX_TEXT)}</td>"
                    f"<td class='l'><small>{_e(r.get('sample_id'), 120)}</small></td></tr>"
                )
        out.append("</table></div></details>")
    return out


def _verdict(task: Any, answer: Any, gold: Any) -> str:
    """`` right`` / `` wrong`` as the task compares an answer with the gold (its
    ``normalize``), ``""`` when that cannot be said."""
    if not isinstance(answer, str) or not isinstance(gold, str) or len(answer) > 10_000 or len(gold) > 10_000:
        return ""
    try:
        from ..tasks import TASKS

        norm = TASKS.get(task).normalize if isinstance(task, str) and task in TASKS else (lambda x: x.strip().lower())
        return " right" if norm(answer) == norm(gold) else " wrong"
    except Exception:  # noqa: BLE001 - no colour rather than no report
        return ""


def _failed_cells(failed: Any) -> list[str]:
    if not isinstance(failed, list) or not failed:
        return []
    out = ["<h2>Failed cells</h2>", "<div class='scroll'><table><tr><th class='l'>model</th><th class='l'>setting</th><th class='l'>task</th><th class='l'>error</th></tr>"]
    for f in failed:
        if isinstance(f, dict):
            out.append(
                f"<tr><td class='l'><code>{_e(f.get('model'), 200)}</code></td><td class='setting'>{_code(f.get('setting'))}</td>"
                f"<td class='l'>{_e(f.get('task'), 80)}</td><td class='text'>{_e(f.get('error'), MAX_TEXT)}</td></tr>"
            )
    out.append("</table></div>")
    return out
