"""A ``Table`` as Markdown (terminal, README), booktabs LaTeX (papers) and CSV (analysis).

All three show the same columns: the row name (the default row marked), the grid's label columns, then
for each metric column the measured value (mean ± std (n=seeds)), the paper's value and the comparison
(``Δ`` to the paper where the setup matches, else the effect against the default row with the paper's
effect and the agreement), then the row's cost.
"""

from __future__ import annotations

from dinolab.home import redact_uri

import io
import math
import re
import unicodedata
from typing import Optional

import pandas as pd

from dinolab.lifecycle import MEASURED, TrialState
from dinolab.track import contract

from .table import Cell, Row, Stat, Table

FORMATS = ("md", "latex", "csv")
SUFFIX = {"md": ".md", "latex": ".tex", "csv": ".csv"}
_STATUS_WORDS = {TrialState.MISSING: "not run", "n/a": "n/a", "reference": "–"}  # else the state's own word
# States whose cell (with no value) shows the first trial's reason.
_WITH_REASON = (TrialState.FAILED, TrialState.CANCELLED, TrialState.STOPPED, TrialState.INTERRUPTED, TrialState.RUNNING)
REASON_CHARS = 48
MARKS = {"agree": "✓", "disagree": "✗", "inconclusive": "?"}  # an effect's agreement in the compact table


def fmt_num(x: Optional[float], digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return text.replace("-", "−")


def fmt_stat(stat: Optional[Stat], digits: int = 1, sign: bool = False) -> str:
    """``72.1`` for one seed, ``72.1 ± 0.4 (n=3)`` for several."""
    if stat is None:
        return "–"
    text = fmt_num(stat.mean, digits, sign)
    if stat.n > 1 and stat.std is not None:
        text += f" ± {fmt_num(stat.std, digits)} (n={stat.n})"
    return text


def _short(text: str, n: int = REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def cell_text(cell: Cell, digits: int = 1) -> str:
    """The measured part of a cell: a value with its state, or the state of its trials."""
    if cell.status == "reference":
        return "–"
    if cell.stat is not None:
        text = fmt_stat(cell.stat, digits)
        if cell.status == "collapsed":
            text += " collapsed"
        pending = [f"{n} {_STATUS_WORDS.get(s, s)}" for s, n in cell.counts.items() if s not in MEASURED]
        if pending:
            text += f" (+{', '.join(pending)})"
        return text
    word = _STATUS_WORDS.get(cell.status, cell.status)
    if cell.status in _WITH_REASON:
        first = next((r for r in cell.reasons if f": {cell.status}: " in r), "")
        reason = first.split(f": {cell.status}: ", 1)[-1] if first else ""
        if reason:
            word += f": {_short(reason)}"
    total = sum(cell.counts.values())
    if total > 1 and cell.counts.get(cell.status, 0) != total:
        word += " (" + ", ".join(f"{n} {_STATUS_WORDS.get(s, s)}" for s, n in cell.counts.items()) + ")"
    return word


def compare_text(row: Row, cell: Cell, digits: int = 1, compact: bool = False) -> str:
    """The comparison part: ``Δ +0.3`` (setup matches the paper) or ``−5.2 ± 1.0 vs −4.3: agree``;
    compact (the 120-column table, whose header says Δ): ``+0.3`` or ``−5.2±1.0 ✓`` (no paper effect)."""
    if row.compare is None:
        return ""
    if row.compare == "paper":
        if cell.diff is None:
            return "–"
        return fmt_num(cell.diff, digits, sign=True) if compact else f"Δ {fmt_num(cell.diff, digits, sign=True)}"
    if row.default:
        return "default"
    if cell.effect is None:
        return "–"
    text = fmt_num(cell.effect.mean, digits, sign=True)
    if cell.effect.std is not None:
        text += ("±" if compact else " ± ") + fmt_num(cell.effect.std, digits)
    if compact:
        return text + (f" {MARKS[cell.agreement]}" if cell.agreement else "")
    if cell.paper_effect is not None:
        text += f" vs {fmt_num(cell.paper_effect, digits, sign=True)}"
    if cell.agreement:
        text += f": {cell.agreement}"
    return text


def _hours_header(table: Table) -> str:
    units = {r.cost.hours_unit for r in table.rows if r.cost.hours is not None}
    return units.pop() if len(units) == 1 else "device-h"


def _mean(stat: Optional[Stat], digits: int) -> str:
    return fmt_num(stat.mean, digits) if stat is not None else "–"


def _cost_cells(table: Table, row: Row) -> list[str]:
    """Means over the row's finished trials (costs vary little over seeds; the CSV has their std)."""
    c = row.cost
    hours = f"{c.hours.mean:.3g}" if c.hours is not None else "–"
    if c.hours is not None and _hours_header(table) == "device-h":
        hours += f" {c.hours_unit}"
    cuda = _mean(c.cuda_peak_mb, 0) if c.cuda_peak_mb is not None and c.cuda_peak_mb.mean > 0 else "–"
    return [_mean(c.images_per_s, 0), _mean(c.wall_time_s, 0), hours, _mean(c.peak_rss_mb, 0), cuda]


COST_HEADERS = ["img/s", "wall s", None, "RSS MB", "CUDA MB"]


def column_label(spec) -> str:
    return spec.label if spec.agg == "final" or spec.agg.lower() in spec.label.lower() else f"{spec.label} [{spec.agg}]"


def header(table: Table) -> list[str]:
    """Row, label columns, then per metric column: value, paper, vs paper (or value, effect when the
    column names no paper value), then the cost columns."""
    cols = ["Row", *table.label_columns]
    for spec in table.columns:
        name = column_label(spec)
        if spec.paper:
            cols += [name, f"{spec.label} paper", f"{spec.label} vs paper"]
        else:
            cols += [name] if spec.baseline else [name, f"{spec.label} effect"]
    return cols + [h or _hours_header(table) for h in COST_HEADERS]


def row_name(row: Row) -> str:
    return f"{row.name} (default)" if row.default else (f"{row.name} (paper only)" if row.reference_only else row.name)


def body(table: Table, digits: int = 1) -> list[list[str]]:
    out = []
    for row in table.rows:
        line = [row_name(row), *[row.labels.get(k, "") for k in table.label_columns]]
        for spec, cell in zip(table.columns, row.cells):
            line.append(cell_text(cell, digits))
            if spec.paper:
                line += [fmt_num(cell.paper, digits), compare_text(row, cell, digits)]
            elif not spec.baseline:
                line.append(compare_text(row, cell, digits) if row.compare == "effect" else "–" if row.compare else "")
        line += _cost_cells(table, row) if not row.reference_only else ["–"] * len(COST_HEADERS)
        out.append(line)
    return out


def summary_line(table: Table) -> str:
    s = table.summary
    if not any(c.stat is not None for r in table.rows for c in r.cells):
        n = sum(len(r.trials) for r in table.rows)
        return f"Nothing measured yet ({n} trials: " + _count_states(table) + ")."
    parts = []
    if s.effect_rows:
        if table.default_row is None:
            parts.append(f"{s.effect_rows} rows differ from the paper's setup, but the grid marks no default row: no effects")
        else:
            parts.append(f"Effects vs the default row ({table.default_row}): {s.agree} agree, {s.disagree} disagree, "
                         f"{s.inconclusive} inconclusive with the paper's effects (counted where |effect| > 2 std over seeds)")
    if s.paper_rows:
        parts.append(f"{s.paper_rows} rows match the paper's setup: Δ = measured − paper")
    return "; ".join(parts) + "." if parts else "Nothing measured yet."


def _count_states(table: Table) -> str:
    counts: dict[str, int] = {}
    for r in table.rows:
        for t in r.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {_STATUS_WORDS.get(k, k)}" for k, n in counts.items()) or "none"


def notes(table: Table) -> list[str]:
    """Setup differences and the full reasons of trials not finished cleanly (failed, cancelled, running, collapsed, ...)."""
    out = list(table.notes)
    setup = []
    for row in table.rows:
        for n in row.setup_notes:
            if n not in setup:
                setup.append(n)
    if setup:
        out.append("Setup differs from the paper's: " + "; ".join(setup) + ".")
    for row in table.rows:
        for st in row.trials:
            if st.status not in (TrialState.FINISHED, TrialState.MISSING) and st.reason:
                out.append(f"{row.name}, seed {st.seed} ({st.trial_id}): {st.status}: {' '.join(st.reason.split())}")
    return out


def _title(table: Table) -> str:
    title = table.grid
    if table.paper_table:
        title += f": {table.paper_title or table.paper_table} (paper table {table.paper_table})"
    return title


def _setup_text(table: Table) -> str:
    setup = ", ".join(f"{k}={v}" for k, v in table.paper_setup.items()) or "not given"
    seeds = ", ".join(str(s) for s in table.seeds) or "–"
    return f"Paper setup: {setup}. Seeds: {seeds}. Store: {redact_uri(table.tracking_uri) or '–'}."


# ---------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(table: Table, digits: int = 1, costs: bool = False) -> str:
    """The table that fits 120 columns (``dinolab.report.fit``), or with ``costs`` the full one: every cost
    column, seed counts, the paper's effects and the failure reasons in the cells."""
    if not costs:
        from .fit import render_compact

        return render_compact(table, digits)
    cols = header(table)
    lines = [f"### {_title(table)}", "", _setup_text(table), ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" if i <= len(table.label_columns) else "---:" for i in range(len(cols))) + "|")
    for line in body(table, digits):
        lines.append("| " + " | ".join(_md_escape(c) for c in line) + " |")
    lines += ["", summary_line(table)]
    extra = notes(table)
    if extra:
        lines += [""] + [f"- {_md_escape(n)}" for n in extra]
    return "\n".join(lines) + "\n"


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first pipe table of a Markdown text as ``[{header: cell}]`` (the inverse of ``render_markdown``)."""
    rows, head = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            if head is not None and rows:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in _split_md(line)]
        if head is None:
            head = cells
        elif set("".join(cells)) <= set("-: "):
            continue
        else:
            rows.append(dict(zip(head, cells)))
    return rows


def _split_md(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner[1:]
    return re.split(r"(?<!\\)\|", inner)


# ---------------------------------------------------------------- LaTeX (booktabs)

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # OT1 text fonts print these three as other glyphs: set them in math
                  "|": r"$|$", "<": r"$<$", ">": r"$>$"}
_LATEX_UNICODE = {"±": r"$\pm$", "−": "-", "–": "--", "—": "---", "✓": r"$\surd$", "✔": r"$\surd$", "✗": r"$\times$",
                  "✘": r"$\times$", "×": r"$\times$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "…": r"\ldots{}",
                  "≤": r"$\leq$", "≥": r"$\geq$", "τ": r"$\tau$", "°": r"$^\circ$"}


def latex_escape(text: str) -> str:
    """Plain text -> ASCII LaTeX that pdflatex compiles with no package beyond booktabs."""
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            ascii_ = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(latex_escape(ascii_) if ascii_ else "?")
    return "".join(out)


def render_latex(table: Table, digits: int = 1, standalone: bool = False) -> str:
    """A booktabs ``table`` float (``standalone``: a whole document, for compiling on its own)."""
    cols = header(table)
    n_text = 1 + len(table.label_columns)
    spec = "l" * n_text + "r" * (len(cols) - n_text)
    rows = body(table, digits)
    for line, row in zip(rows, table.rows):
        line[0] = row.name + (" (default)" if row.default else "")
    out = [r"\begin{table}[t]", r"\centering", r"\footnotesize", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for line, row in zip(rows, table.rows):
        cells = [latex_escape(c) for c in line]
        if row.default:
            cells[0] = rf"\textbf{{{cells[0]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    caption = f"{_title(table)}. {summary_line(table)}"
    out.append(rf"\caption{{{latex_escape(caption)}}}")
    out.append(rf"\label{{tab:{re.sub(r'[^A-Za-z0-9.-]', '-', table.grid)}}}")
    extra = [_setup_text(table)] + notes(table)
    out.append(r"\par\smallskip\parbox{\linewidth}{\scriptsize " + r" \\ ".join(latex_escape(n) for n in extra) + "}")
    out.append(r"\end{table}")
    text = "\n".join(out) + "\n"
    if standalone:
        text = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + text + "\\end{document}\n"
    return text


# ---------------------------------------------------------------- CSV


def _stat_cols(prefix: str, stat: Optional[Stat]) -> dict:
    return {prefix: stat.mean if stat else None, f"{prefix}_std": stat.std if stat else None,
            f"{prefix}_n": stat.n if stat else 0}


def table_frame(table: Table) -> pd.DataFrame:
    """One line per table row, every number unrounded: the CSV's content."""
    records = []
    for row in table.rows:
        rec = {"grid": table.grid, "row": row.name, "default": row.default, "reference_only": row.reference_only,
               "compare": row.compare or ""}
        rec.update({k: row.labels.get(k, "") for k in table.label_columns})
        for spec, cell in zip(table.columns, row.cells):
            p = spec.label
            rec.update(_stat_cols(p, cell.stat))
            rec.update({f"{p}_status": cell.status, f"{p}_paper": cell.paper, f"{p}_diff": cell.diff,
                        f"{p}_effect": cell.effect.mean if cell.effect else None,
                        f"{p}_effect_std": cell.effect.std if cell.effect else None,
                        f"{p}_paper_effect": cell.paper_effect, f"{p}_agreement": cell.agreement or "",
                        f"{p}_seeds": " ".join(str(s) for s in cell.per_seed)})
        c = row.cost
        rec.update(_stat_cols(contract.IMAGES_PER_S, c.images_per_s))
        rec.update(_stat_cols(contract.WALL_TIME_S, c.wall_time_s))
        rec.update(_stat_cols("device_hours", c.hours))
        rec["device_hours_unit"] = c.hours_unit if c.hours else ""
        rec.update(_stat_cols(contract.PEAK_RSS_MB, c.peak_rss_mb))
        rec.update(_stat_cols(contract.CUDA_PEAK_MB, c.cuda_peak_mb))
        rec["trials"] = " ".join(f"{t.seed}:{t.status}" for t in row.trials)
        rec["setup_notes"] = "; ".join(row.setup_notes)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    table_frame(table).to_csv(buf, index=False)
    return buf.getvalue()


def render(table: Table, fmt: str = "md", digits: int = 1, costs: bool = False) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "md":
        return render_markdown(table, digits, costs)
    if fmt == "latex":
        return render_latex(table, digits)
    return render_csv(table)
