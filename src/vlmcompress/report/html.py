"""``report.html``: the markdown report's tables, a Pareto plot per model (overall
performance against the bytes held), and the first disagreements with the baseline.

Every string that came from a model, a dataset or a user (predictions, golds, setting
specs, model names) goes through :func:`html.escape`; the page has no script.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from .summary import BASELINE, is_significant, mean_efficiency, model_grids, op_and_loyalty, overall_generalization_of, primary_metric, primary_score, primary_with_ci, speedup
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
td.bad{background:#fde2e2} td.good{background:#e2f5e2}
code{font-size:13px}
.note{color:#555;font-size:14px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else _e(x)


def _mib(x: Any) -> str:
    return "–" if x is None else f"{float(x) / 2**20:.2f} MiB"


def _pareto_png(points: list[tuple[str, float, float]], xlabel: str) -> str | None:
    """A base64 PNG of OP against bytes, the Pareto front drawn as a line."""
    pts = [(s, x, y) for s, x, y in points if x is not None and y is not None and not math.isnan(y)]
    if len(pts) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for s, x, y in pts:
        ax.scatter(x / 2**20, y, s=20)
        ax.annotate(s if len(s) <= 40 else s[:37] + "...", (x / 2**20, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], -math.inf
    for s, x, y in sorted(pts, key=lambda p: (p[1], -p[2])):
        if y > best:
            front.append((x / 2**20, y))
            best = y
    ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("overall performance (OP)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(results: dict[str, Any], disagreements: dict[tuple[str, str, str], list[dict]] | None = None) -> str:
    """``disagreements``: per (model, setting, task), sample rows whose prediction differs
    from the baseline's, each with ``sample_id``, ``prediction``, ``baseline`` and ``gold``."""
    cells = results.get("cells", [])
    cfg = results.get("config", {})
    ver = results.get("versions", {})
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>vlmcompress report</title><style>{_STYLE}</style></head><body>",
        "<h1>vlmcompress report</h1>",
        f"<p class='note'>Run of {_e(results.get('date', '?'))} · seed {_e(cfg.get('seed'))} · limit {_e(cfg.get('limit'))} per task · "
        f"batch {_e(cfg.get('batch_size'))} · torch {_e(ver.get('torch', '?'))} · transformers {_e(ver.get('transformers', '?'))} · device {_e(ver.get('device', '?'))}</p>",
        "<p class='note'>Each task's primary metric (named in its column; accuracy on 0–1 for the synthetic suite) with a 95% bootstrap interval; red cells are drops the paired McNemar test finds significant (p &lt; 0.05), green cells significant gains. "
        "Loyalty: share of predictions identical to the baseline's. OP: root mean square of per-task retention; OG: its coefficient of variation (lower = more uniform).</p>",
    ]
    for model, mg in model_grids(cells).items():
        tasks, settings, grid = mg.tasks, mg.settings, mg.grid
        bc = mg.baseline_cells()
        out.append(f"<h2>Model <code>{_e(model)}</code></h2>")
        metric_of = {t: primary_metric(next(c for c in mg.cells if c["task"] == t)) for t in tasks}
        out.append(
            "<table><tr><th>setting</th>" + "".join(f"<th>{_e(t)}<br><small>{_e(metric_of[t])}</small></th>" for t in tasks)
            + "<th>OP</th><th>OG</th><th>loyalty</th><th>weights</th><th>KV/sample</th><th>prefill ×</th><th>decode ×</th></tr>"
        )
        points_w, points_kv = [], []
        for s in settings:
            tds = []
            for t in tasks:
                c, b = grid.get((s, t)), grid.get((BASELINE, t))
                if c is None:
                    tds.append("<td>…</td>")
                    continue
                acc, lo, hi = primary_with_ci(c)
                cls = ""
                if is_significant(c, s) and b is not None and acc is not None:
                    cls = " class='bad'" if acc < (primary_score(b) or 0) else " class='good'"
                tds.append(f"<td{cls}>{_num(acc)} <small>[{_num(lo, 2)}, {_num(hi, 2)}]</small></td>")
            sc = mg.cells_of(s)
            op, loyalty = op_and_loyalty(mg, s)
            w, kv = mean_efficiency(sc, "weight_bytes"), mean_efficiency(sc, "kv_bytes")
            pf = speedup(mean_efficiency(bc, "prefill_s"), mean_efficiency(sc, "prefill_s"))
            dc = speedup(mean_efficiency(bc, "decode_s_per_token"), mean_efficiency(sc, "decode_s_per_token"))
            points_w.append((s, w, op))
            points_kv.append((s, kv, op))
            out.append(
                f"<tr><td><code>{_e(s)}</code></td>{''.join(tds)}<td>{_num(op)}</td><td>{_num(overall_generalization_of(mg, s))}</td><td>{_num(loyalty)}</td>"
                f"<td>{_mib(w)}</td><td>{_mib(kv)}</td><td>{_num(pf, 2)}</td><td>{_num(dc, 2)}</td></tr>"
            )
        out.append("</table>")
        for points, label in ((points_w, "weight bytes (MiB)"), (points_kv, "KV-cache bytes per sample (MiB)")):
            png = _pareto_png(points, label)
            if png:
                out.append(f"<img alt='OP against {_e(label)}' src='data:image/png;base64,{png}'>")
        if disagreements:
            shown = [(k, rows) for k, rows in disagreements.items() if k[0] == model and rows]
            if shown:
                out.append("<h3>Where settings disagree with the baseline (first few per cell)</h3>")
                out.append("<table><tr><th>setting</th><th>task</th><th>sample</th><th>prediction</th><th>baseline</th><th>gold</th></tr>")
                for (_, s, t), rows in shown:
                    for r in rows:
                        out.append(
                            f"<tr><td><code>{_e(s)}</code></td><td>{_e(t)}</td><td>{_e(r['sample_id'])}</td><td>{_e(r['prediction'])}</td>"
                            f"<td>{_e(r['baseline'])}</td><td>{_e(r['gold'])}</td></tr>"
                        )
                out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
