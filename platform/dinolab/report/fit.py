"""The default Markdown / terminal table, at most ``WIDTH`` characters wide.

Columns: the row, its labels, each declared metric (value; the paper's value and the comparison when the
column names a paper value, else the effect against the default row; a baseline such as the random-init
k-NN has no effect), and one cost column (device-hours). Cells are short: ``mean±std`` (``(n=k)`` only
when fewer seeds than the grid's finished), the effect's agreement with the paper's as a mark (✓ ✗ ?), a
failed trial's reason in the notes below the table. Then, while the table is wider than ``WIDTH``, the
widest of the row and label columns is narrowed (its texts end in …), down to ``MIN_TEXT``; a grid whose
metric columns alone are wider is split into blocks of columns, each repeating the row and its labels.
Lines of prose are wrapped at ``WIDTH``. ``--costs`` prints the full table instead (render.render_markdown).
"""

from __future__ import annotations

import textwrap
import unicodedata
from typing import Optional

WIDTH = 120
MIN_TEXT = 8
BLOCK_TEXT = 24  # the most a text column gets when the table is split into blocks
COLLAPSED = "†"
LEGEND = ("mean±std over seeds; † collapsed; Δ: measured − paper where the setup matches the paper's, else the effect "
          "against the default row, ✓ / ✗ where it agrees / disagrees with the paper's effect, ? where |effect| ≤ 2 std; "
          "--costs: every cost column, the paper's effects")


def text_width(text: str) -> int:
    """Terminal columns of ``text``: wide East Asian characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def cut(text: str, width: int) -> str:
    if text_width(text) <= width:
        return text
    while text and text_width(text) > width - 1:
        text = text[:-1]
    return text.rstrip() + "…"


def _pm(stat, digits: int) -> str:
    """``45.3±1.2`` (one seed: ``45.3``): the tight form of render.fmt_stat."""
    from .render import fmt_num

    return fmt_num(stat.mean, digits) + (f"±{fmt_num(stat.std, digits)}" if stat.n > 1 and stat.std is not None else "")


def compact_cell(cell, digits: int, n_seeds: int) -> str:
    from .render import _STATUS_WORDS

    if cell.status == "reference":
        return "–"
    if cell.stat is None:
        return _STATUS_WORDS.get(cell.status, cell.status)
    text = _pm(cell.stat, digits)
    if cell.stat.n < n_seeds:
        text += f" (n={cell.stat.n})"
    return text + (COLLAPSED if cell.status == "collapsed" else "")  # the other seeds' states: in the notes


def compact_columns(table, digits: int = 1) -> tuple[list[str], list[list[str]], int]:
    """(header, rows, number of leading text columns: the row and its labels)."""
    from .render import _hours_header, column_label, compare_text, fmt_num

    head = ["Row", *table.label_columns]  # the default row is the one whose Δ says "default"
    for spec in table.columns:
        head.append(column_label(spec))
        if spec.paper:
            head += [f"{spec.label} paper", f"{spec.label} Δ"]
        elif not spec.baseline:
            head.append(f"{spec.label} Δ")
    head.append(_hours_header(table))
    n_seeds = max(1, len(table.seeds))
    rows = []
    for row in table.rows:
        name = row.name + (" (paper only)" if row.reference_only else "")
        line = [name, *[row.labels.get(k, "") for k in table.label_columns]]
        for spec, cell in zip(table.columns, row.cells):
            line.append(compact_cell(cell, digits, n_seeds))
            if spec.paper:
                line += [fmt_num(cell.paper, digits), compare_text(row, cell, digits, compact=True)]
            elif not spec.baseline:
                line.append(compare_text(row, cell, digits, compact=True) if row.compare == "effect" else "–" if row.compare else "")
        hours = row.cost.hours
        line.append("–" if row.reference_only or hours is None else f"{hours.mean:.3g}")
        rows.append(line)
    return head, rows, 1 + len(table.label_columns)


def _widths(head: list[str], rows: list[list[str]]) -> list[int]:
    return [max(text_width(r[i]) for r in [head, *rows]) for i in range(len(head))]


def _total(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # "| " + " | ".join + " |"


def _md_line(cells: list[str], widths: list[int], right: set[int]) -> str:
    def pad(i, c):
        gap = " " * (widths[i] - text_width(c))
        return gap + c if i in right else c + gap

    return "| " + " | ".join(pad(i, c) for i, c in enumerate(cells)) + " |"


def _shrink(widths: list[int], n_text: int, fits) -> list[int]:
    """Narrow the widest of the text columns by one until ``fits(widths)`` or all are at ``MIN_TEXT``."""
    while not fits(widths):
        i = max(range(n_text), key=lambda j: widths[j])
        if widths[i] <= MIN_TEXT:
            break
        widths[i] -= 1
    return widths


def _pack(widths: list[int], n_text: int, width: int) -> list[list[int]]:
    """The metric columns in order, in blocks that fit ``width`` behind the text columns (at least one each)."""
    blocks: list[list[int]] = [[]]
    for i in range(n_text, len(widths)):
        if blocks[-1] and _block_total(widths, n_text, blocks[-1] + [i]) > width:
            blocks.append([])
        blocks[-1].append(i)
    return blocks


def _block_total(widths: list[int], n_text: int, block: list[int]) -> int:
    return _total(widths[:n_text] + [widths[i] for i in block])


def fit_table(head: list[str], rows: list[list[str]], n_text: int, width: int = WIDTH) -> list[str]:
    """Aligned Markdown pipe table(s) no wider than ``width`` (see the module docstring)."""
    from .render import _md_escape

    head = [_md_escape(c) for c in head]
    rows = [[_md_escape(c) for c in r] for r in rows]
    natural = _widths(head, rows)
    widths = _shrink(list(natural), n_text, lambda w: _total(w) <= width)
    blocks = [list(range(n_text, len(head)))]
    if _total(widths) > width:  # as few blocks as the narrowest text columns allow; then the text gets room back
        blocks = _pack(widths, n_text, width)
        widths = [min(w, BLOCK_TEXT) if i < n_text else w for i, w in enumerate(natural)]
        widths = _shrink(widths, n_text, lambda w: all(_block_total(w, n_text, b) <= width for b in blocks))
    for i in range(n_text):
        head[i] = cut(head[i], widths[i])
        for r in rows:
            r[i] = cut(r[i], widths[i])
    out: list[str] = []
    for block in blocks:
        cols = list(range(n_text)) + block
        w = [widths[i] for i in cols]
        right = set(range(n_text, len(cols)))
        if out:
            out.append("")
        out.append(_md_line([head[i] for i in cols], w, right))
        out.append("|" + "|".join("-" * (x + 1) + ":" if j in right else "-" * (x + 2) for j, x in enumerate(w)) + "|")
        out += [_md_line([r[i] for i in cols], w, right) for r in rows]
    return out


def wrap(text: str, width: int = WIDTH, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=" " * len(indent), break_on_hyphens=False,
                         break_long_words=False) or [""]


def render_compact(table, digits: int = 1, width: int = WIDTH) -> str:
    from .render import _md_escape, _setup_text, _title, notes, summary_line

    head, rows, n_text = compact_columns(table, digits)
    lines = [*wrap(f"### {_title(table)}", width), "", *wrap(_setup_text(table), width), ""]
    lines += fit_table(head, rows, n_text, width)
    lines += ["", *wrap(summary_line(table), width), *wrap(LEGEND + ".", width)]
    extra = notes(table)
    if extra:
        lines.append("")
        for n in extra:
            lines += wrap(_md_escape(n), width, "- ")
    return "\n".join(lines) + "\n"


def widest_line(text: str) -> Optional[int]:
    return max((text_width(line) for line in text.splitlines()), default=None)
