"""One self-contained HTML page per grid: the table, accuracy against throughput (DINO Figure 5), the
training curves of each row, the collapse diagnostics (teacher entropy and KL per epoch, Figure 7),
and the attention maps the trials logged (image keys ``attention/...``).

The plots are inline SVG written here; the page loads nothing from anywhere (template: package data,
``dinolab/report/templates/dashboard.html``). Every plotted element carries ``data-row`` (its table row) and
``data-kind`` (``point`` / ``curve`` / ``seed-curve``) and each plot ``data-plot``, so a browser test
can count them. Unlike the tables, the page reads metric histories (per-epoch curves).
"""

from __future__ import annotations

from dinolab.home import redact_uri

import base64
import contextlib
import html
import logging
import math
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd

from dinolab.track import contract

from .render import cell_text, column_label, compare_text, fmt_num, notes, row_name, summary_line
from .table import Table

log = logging.getLogger(__name__)

TEMPLATE = resources.files(__package__) / "templates" / "dashboard.html"  # package data
DEFAULT_DIR = Path("dashboards")  # the default output folder, under the working directory (as reports/ is)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#ad494a")
CURVES = ((contract.KNN_TOP1, "k-NN top-1 (%)"), (contract.LOSS, "training loss"))
COLLAPSE = ((contract.TEACHER_ENTROPY, "teacher entropy h(Pt) (nats)"), (contract.KL, "KL(Pt ‖ Ps) (nats)"))
HISTORY_KEYS = tuple(k for k, _ in CURVES + COLLAPSE)
ATTENTION_PREFIX = contract.ATTENTION_IMAGE.split("/")[0] + "/"
MAX_ATTENTION_IMAGES = 8  # per row
W, H = 430, 260
MARGIN = (46, 12, 14, 36)  # left, right, top, bottom (px)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------- SVG plots


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k; at least 1 if ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:  # one value: a window around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(step, 1.0)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks and ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


class _Frame:
    """Data -> pixel mapping of one plot with round axis limits."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], integer_x: bool = False):
        self.xt = nice_ticks(min(xs), max(xs), integer=integer_x) if xs else [0.0, 1.0]
        self.yt = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]
        self.x0, self.x1 = self.xt[0], self.xt[-1]
        self.y0, self.y1 = self.yt[0], self.yt[-1]

    def x(self, v: float) -> float:
        left, right = MARGIN[0], W - MARGIN[1]
        return left + (v - self.x0) / ((self.x1 - self.x0) or 1.0) * (right - left)

    def y(self, v: float) -> float:
        top, bottom = MARGIN[2], H - MARGIN[3]
        return bottom - (v - self.y0) / ((self.y1 - self.y0) or 1.0) * (bottom - top)

    def axes(self, x_label: str, y_label: str) -> list[str]:
        out = []
        for t in self.yt:
            y = self.y(t)
            out.append(f'<line class="grid" x1="{MARGIN[0]}" x2="{W - MARGIN[1]}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text x="{MARGIN[0] - 5}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
        for t in self.xt:
            x = self.x(t)
            out.append(f'<text x="{x:.1f}" y="{H - MARGIN[3] + 14}" text-anchor="middle">{_tick(t)}</text>')
        out.append(f'<line class="axis" x1="{MARGIN[0]}" x2="{W - MARGIN[1]}" y1="{H - MARGIN[3]}" y2="{H - MARGIN[3]}"/>')
        out.append(f'<line class="axis" x1="{MARGIN[0]}" x2="{MARGIN[0]}" y1="{MARGIN[2]}" y2="{H - MARGIN[3]}"/>')
        out.append(f'<text x="{(MARGIN[0] + W - MARGIN[1]) / 2:.0f}" y="{H - 4}" text-anchor="middle">{_e(x_label)}</text>')
        out.append(f'<text transform="translate(11,{(MARGIN[2] + H - MARGIN[3]) / 2:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{_e(y_label)}</text>')
        return out


def _tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.6g}"


def _path(points: Sequence[tuple[float, float]], f: _Frame) -> str:
    return " ".join(f"{'M' if i == 0 else 'L'}{f.x(x):.1f},{f.y(y):.1f}" for i, (x, y) in enumerate(points))


def _figure(plot_id: str, title: str, svg_body: list[str], legend: str = "") -> str:
    return (f'<figure class="plot" data-plot="{_e(plot_id)}"><figcaption>{_e(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
            f'aria-label="{_e(title)}">' + "".join(svg_body) + "</svg>" + legend + "</figure>")


def line_plot(plot_id: str, title: str, series: Sequence[Mapping], x_label: str, y_label: str) -> str:
    """series: ``{row, color, points: [(x, y)], seeds: [[(x, y)], ...]}``; one ``curve`` path per series
    (the mean over seeds) and one faint ``seed-curve`` path per seed."""
    xs = [x for s in series for line in [s["points"], *s.get("seeds", [])] for x, _ in line]
    ys = [y for s in series for line in [s["points"], *s.get("seeds", [])] for _, y in line]
    f = _Frame(xs, ys, integer_x=True)
    body = f.axes(x_label, y_label)
    for s in series:
        row, color = _e(s["row"]), s["color"]
        for seed_points in s.get("seeds", []):
            if len(s.get("seeds", [])) > 1 and seed_points:
                body.append(f'<path class="seed" data-kind="seed-curve" data-row="{row}" stroke="{color}" '
                            f'd="{_path(seed_points, f)}"/>')
        if s["points"]:
            body.append(f'<path class="series" data-kind="curve" data-row="{row}" stroke="{color}" '
                        f'd="{_path(s["points"], f)}"><title>{row}</title></path>')
            if len(s["points"]) == 1:
                x, y = s["points"][0]
                body.append(f'<circle data-kind="marker" data-row="{row}" cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{color}"/>')
    return _figure(plot_id, title, body)


def scatter_plot(plot_id: str, title: str, points: Sequence[Mapping], x_label: str, y_label: str) -> str:
    """points: ``{row, color, x, y, yerr}``; one ``point`` circle per row, with a ± std bar."""
    xs = [p["x"] for p in points]
    ys = [p["y"] + s * (p.get("yerr") or 0.0) for p in points for s in (-1, 1)]
    f = _Frame(xs, ys)
    body = f.axes(x_label, y_label)
    for p in points:
        row, color, x, y = _e(p["row"]), p["color"], f.x(p["x"]), f.y(p["y"])
        if p.get("yerr"):
            lo, hi = f.y(p["y"] - p["yerr"]), f.y(p["y"] + p["yerr"])
            body.append(f'<line data-kind="errorbar" data-row="{row}" x1="{x:.1f}" x2="{x:.1f}" y1="{lo:.1f}" '
                        f'y2="{hi:.1f}" stroke="{color}"/>')
        body.append(f'<circle data-kind="point" data-row="{row}" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}">'
                    f'<title>{row}: {p["y"]:.2f} at {p["x"]:.1f} img/s</title></circle>')
        body.append(f'<text data-row="{row}" x="{x + 7:.1f}" y="{y - 6:.1f}">{row}</text>')
    return _figure(plot_id, title, body)


# ---------------------------------------------------------------- page parts


def colors(table: Table) -> dict[str, str]:
    return {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(table.rows)}


def legend(table: Table, rows: Iterable[str]) -> str:
    col = colors(table)
    items = "".join(f'<li data-row="{_e(r)}"><span class="swatch" style="background:{col[r]}"></span>{_e(r)}</li>'
                    for r in rows)
    return f'<ul class="legend">{items}</ul>'


def table_html(table: Table, digits: int = 1) -> str:
    col = colors(table)
    head = ['<th class="text">Row</th>'] + [f'<th class="text">{_e(k)}</th>' for k in table.label_columns]
    for spec in table.columns:
        head.append(f"<th>{_e(column_label(spec))}</th>")
        head += [f"<th>{_e(spec.label)} paper</th>", f"<th>{_e(spec.label)} vs paper</th>"] if spec.paper else \
            [] if spec.baseline else [f"<th>{_e(spec.label)} effect</th>"]
    head += ["<th>img/s</th>", "<th>wall s</th>", "<th>device-h</th>", "<th>RSS MB</th>", "<th>CUDA MB</th>"]
    lines = []
    for row in table.rows:
        cls = "default" if row.default else ("reference" if row.reference_only else "")
        tds = [f'<td class="text name"><span class="swatch" style="background:{col[row.name]}"></span>{_e(row_name(row))}</td>']
        tds += [f'<td class="text">{_e(row.labels.get(k, ""))}</td>' for k in table.label_columns]
        for spec, cell in zip(table.columns, row.cells):
            title = _e(" | ".join(cell.reasons)) if cell.reasons else ""
            status = "na" if cell.status == "n/a" else cell.status.replace(" ", "-")
            tds.append(f'<td class="status-{status}" data-status="{_e(cell.status)}" title="{title}">{_e(cell_text(cell, digits))}</td>')
            comp = compare_text(row, cell, digits) if (spec.paper or row.compare == "effect") else ("–" if row.compare else "")
            comp_td = f'<td class="{_e(cell.agreement or "")}">{_e(comp)}</td>'
            tds += [f"<td>{_e(fmt_num(cell.paper, digits))}</td>", comp_td] if spec.paper else [] if spec.baseline else [comp_td]
        c = row.cost
        cost = [fmt_num(c.images_per_s.mean, 0) if c.images_per_s else "–",
                fmt_num(c.wall_time_s.mean, 0) if c.wall_time_s else "–",
                f"{c.hours.mean:.3g} {c.hours_unit}" if c.hours else "–",
                fmt_num(c.peak_rss_mb.mean, 0) if c.peak_rss_mb else "–",
                fmt_num(c.cuda_peak_mb.mean, 0) if c.cuda_peak_mb and c.cuda_peak_mb.mean > 0 else "–"]
        tds += [f"<td>{_e(v)}</td>" for v in cost]
        lines.append(f'<tr class="{cls}" data-row="{_e(row.name)}">' + "".join(tds) + "</tr>")
    return (f'<table class="ablation" data-table="{_e(table.grid)}"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def accuracy_points(table: Table) -> list[dict]:
    """One point per measured row: the first accuracy column's mean (± std) against training images/s."""
    spec_i = next((i for i, s in enumerate(table.columns) if s.metric != contract.THROUGHPUT), None)
    if spec_i is None:
        return []
    col, out = colors(table), []
    for row in table.rows:
        cell = row.cells[spec_i] if row.cells else None
        if cell is None or cell.stat is None or row.cost.images_per_s is None:
            continue
        out.append({"row": row.name, "color": col[row.name], "x": row.cost.images_per_s.mean, "y": cell.stat.mean,
                    "yerr": cell.stat.std or 0.0})
    return out


def curve_series(table: Table, histories: pd.DataFrame, key: str) -> list[dict]:
    """Per row: the per-epoch mean over its seeds' runs of metric ``key``, and each seed's curve."""
    col = colors(table)
    out = []
    for row in table.rows:
        run_ids = [t.run_id for t in row.trials if t.run_id]
        h = histories[(histories["key"] == key) & histories["run_id"].isin(run_ids)] if len(histories) else histories
        h = h.dropna(subset=["value"]) if len(h) else h
        if not len(h):
            continue
        # A trial logs its final k-NN again at step = epochs (after the last epoch): keep epochs only.
        loss = histories[(histories["key"] == "loss") & histories["run_id"].isin(run_ids)]
        if len(loss):
            last = loss.groupby("run_id")["step"].max()
            h = h[h["step"] <= h["run_id"].map(last).fillna(float("inf"))]
        mean = h.groupby("step")["value"].mean().sort_index()
        seeds = [list(zip(g["step"].astype(float), g["value"])) for _, g in h.sort_values("step").groupby("run_id")]
        out.append({"row": row.name, "color": col[row.name], "points": list(zip(mean.index.astype(float), mean.values)),
                    "seeds": seeds})
    return out


def attention_html(table: Table, images: Mapping[str, Sequence[tuple[str, int, str]]]) -> str:
    """The attention maps logged under ``attention/`` (a row's first run that has any), or where they go."""
    if not any(images.values()):
        return ('<p class="note" data-kind="attention-empty">No attention maps logged yet: a trial logs them with '
                f'<code>log_image(..., key="{ATTENTION_PREFIX}&lt;name&gt;", step=epoch)</code> and they appear here.</p>')
    parts = []
    for row in table.rows:
        for key, step, uri in images.get(row.name, []):
            parts.append(f'<figure data-kind="attention" data-row="{_e(row.name)}"><img alt="{_e(key)}" src="{uri}">'
                         f"<figcaption>{_e(row.name)}<br>{_e(key)} (epoch {step})</figcaption></figure>")
    return f'<div class="attention">{"".join(parts)}</div>'


def dashboard_html(table: Table, histories: pd.DataFrame, images: Optional[Mapping] = None, generated: str = "") -> str:
    """The whole page."""
    images = images or {}
    title = f"dinolab: {table.grid}"
    sub = f"{table.paper_title} (paper table {table.paper_table})" if table.paper_table else ""
    body = [f"<h1>{_e(title)}</h1>"]
    if sub:
        body.append(f'<p class="meta">{_e(sub)}</p>')
    setup = ", ".join(f"{k}={v}" for k, v in table.paper_setup.items()) or "not given"
    body.append(f'<p class="meta">Paper setup: {_e(setup)} · seeds {_e(", ".join(map(str, table.seeds)))} · '
                f"store {_e(redact_uri(table.tracking_uri))}{' · ' + _e(generated) if generated else ''}</p>")

    body += ["<h2>Table</h2>", table_html(table), f'<p class="note" data-kind="summary">{_e(summary_line(table))}</p>']
    extra = notes(table)
    if extra:
        body.append("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in extra) + "</ul>")

    points = accuracy_points(table)
    acc_label = next((column_label(s) for s in table.columns if s.metric != contract.THROUGHPUT), "accuracy")
    body.append("<h2>Accuracy against training throughput (DINO Figure 5)</h2>")
    body.append('<div class="plots">' + scatter_plot("accuracy-throughput", f"{acc_label} vs images/s", points,
                                                     "training images / s", acc_label)
                + "</div>" + legend(table, [p["row"] for p in points]))

    for heading, plots in (("Training curves", CURVES), ("Collapse diagnostics (DINO Figure 7)", COLLAPSE)):
        figs, rows_seen = [], []
        for key, label in plots:
            series = curve_series(table, histories, key)
            rows_seen += [s["row"] for s in series if s["row"] not in rows_seen]
            figs.append(line_plot(key, label, series, "epoch", label))
        body.append(f"<h2>{_e(heading)}</h2>")
        body.append('<div class="plots">' + "".join(figs) + "</div>" + legend(table, rows_seen))

    body.append("<h2>Attention maps</h2>")
    body.append(attention_html(table, images))
    template = TEMPLATE.read_text(encoding="utf-8")
    return template.replace("{{title}}", _e(title)).replace("{{body}}", "\n".join(body))


# ---------------------------------------------------------------- reading images, writing, logging


def parse_image_name(name: str) -> Optional[tuple[str, int]]:
    """``attention~cls+step+3+timestamp+...+<uuid>.png`` (MLflow ``log_image``) -> (``attention/cls``, 3)."""
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(".png") or "+step+" not in base:
        return None
    parts = base[: -len(".png")].split("+")
    try:
        step = int(parts[parts.index("step") + 1])
    except (ValueError, IndexError):
        return None
    return parts[0].replace("~", "/"), step


def attention_images(client, run_id: str, limit: int = MAX_ATTENTION_IMAGES) -> list[tuple[str, int, str]]:
    """The newest image of each ``attention/`` key of a run, as (key, step, data URI), at most ``limit``."""
    try:
        files = client.list_artifacts(run_id, "images")
    except Exception as e:  # noqa: BLE001 - an unreachable artifact store only loses the images
        log.warning("run %s: cannot list images (%s)", run_id, e)
        return []
    newest: dict[str, tuple[int, str]] = {}
    for f in files:
        parsed = parse_image_name(f.path)
        if parsed and parsed[0].startswith(ATTENTION_PREFIX) and parsed[1] >= newest.get(parsed[0], (-1, ""))[0]:
            newest[parsed[0]] = (parsed[1], f.path)
    out = []
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        for key in sorted(newest)[:limit]:
            step, path = newest[key]
            local = Path(client.download_artifacts(run_id, path, tmp))
            out.append((key, step, "data:image/png;base64," + base64.b64encode(local.read_bytes()).decode()))
    return out


@contextlib.contextmanager
def _no_progress_bar():
    """MLflow draws a progress bar per downloaded artifact on stderr; not for a few small images."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def grid_parent_run(client, grid: str, experiment_names: Iterable[str] = ()) -> Optional[str]:
    """The run the sweep opened for the grid (``sweep.store.find_parent_run``): in the trials' experiments
    first, else in any experiment."""
    from dinolab.sweep.store import find_parent_run as find

    from .runs import experiment_ids

    exp_ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in experiment_names) if e is not None]
    for ids in (exp_ids, experiment_ids(client)):
        rec = find(client, ids, grid) if ids else None
        if rec is not None:
            return rec.run_id
    return None


def default_output(grid: str) -> Path:
    return DEFAULT_DIR / f"{grid}.html"


def write_dashboard(grid_or_path, out: Optional[os.PathLike] = None, tracking_uri: Optional[str] = None,
                    overrides: Sequence[str] = (), *, log_to_parent: bool = True, method: str = "auto",
                    now: Optional[float] = None, storage: Optional[Path] = None) -> tuple[Path, Table, Optional[str]]:
    """Build a grid's dashboard and write it to ``out`` (a file, or a folder for ``<grid>.html``; default
    ``dashboards/<grid>.html``); also log it on the grid's parent run when there is one.

    Returns (path written, the table, the parent run id it was logged on or None).
    """
    from mlflow.tracking import MlflowClient

    from .runs import load_histories
    from .table import as_grid, build_table, load_grid_runs

    grid = as_grid(grid_or_path, overrides)
    (_, uri, runs, keys, index), = load_grid_runs([grid], tracking_uri, method=method)
    table = build_table(grid, runs, tracking_uri=uri, now=now, keys=keys, index=index, storage=storage)
    run_ids = [t.run_id for r in table.rows for t in r.trials if t.run_id]
    histories = load_histories(uri, run_ids, HISTORY_KEYS, method=method)

    client = MlflowClient(tracking_uri=uri)
    col = f"tags.{contract.MLFLOW_LOGGED_IMAGES}"
    logged = set(runs.loc[runs[col].astype(object).eq("True"), "run_id"]) if col in runs.columns else set()
    images: dict[str, list] = {}
    for row in table.rows:
        for t in row.trials:
            if t.run_id in logged:
                found = attention_images(client, t.run_id)
                if found:
                    images[row.name] = found
                    break

    page = dashboard_html(table, histories, images)
    path = Path(out) if out is not None else default_output(table.grid)
    if path.is_dir() or (out is not None and str(out).endswith(os.sep)):
        path = path / f"{table.grid}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")

    parent = None
    from dinolab.sweep.store import store_exists

    if log_to_parent and store_exists(uri):  # a missing SQLite store has no parent run (and must not be created)
        names = {t.config.tracking.experiment for t in grid.trials if getattr(t, "config", None) is not None}
        try:
            parent = grid_parent_run(client, table.grid, sorted(names))
            if parent is None:
                log.info("grid %s has no parent run yet (dinolab sweep creates it): dashboard not logged", table.grid)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    named = Path(tmp) / f"{table.grid}.html"
                    named.write_text(page, encoding="utf-8")
                    client.log_artifact(parent, str(named), contract.DASHBOARD_DIR)
        except Exception as e:  # noqa: BLE001 - the file is written; logging it is a convenience
            log.warning("could not log the dashboard on the parent run of grid %s: %s", table.grid, e)
            parent = None
    return path, table, parent
