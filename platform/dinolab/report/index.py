"""``dashboards/index.html``: one line per grid, linking its dashboard page (``dinolab dashboard --all``).

Each line: the grid (a link to ``<grid>.html`` beside the index), its paper table, its trials' states and
the table's summary line. Self-contained like the grid pages (the same template, nothing fetched).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from dinolab.lifecycle import TrialState

from .dashboard import TEMPLATE, _e
from .render import summary_line
from .table import Table


def _states(table: Table) -> str:
    counts = {s: 0 for s in TrialState}
    for row in table.rows:
        for t in row.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trials"


def index_html(pages: Sequence[tuple[Table, str]], generated: str = "") -> str:
    """pages: (table, the page's file name relative to the index), in the order to list them."""
    rows = []
    for table, href in pages:
        paper = f"{table.paper_title or table.paper_table} ({table.paper_table})" if table.paper_table else "–"
        rows.append(f'<tr data-grid="{_e(table.grid)}"><td class="text name"><a href="{_e(href)}">{_e(table.grid)}</a></td>'
                    f'<td class="text">{_e(paper)}</td><td class="text">{_e(_states(table))}</td>'
                    f'<td class="text">{_e(summary_line(table))}</td></tr>')
    body = ["<h1>dinolab: every grid</h1>",
            f'<p class="meta">{len(pages)} grid(s){" · " + _e(generated) if generated else ""}</p>',
            '<table class="ablation" data-table="index"><thead><tr><th class="text">Grid</th><th class="text">Paper table</th>'
            '<th class="text">Trials</th><th class="text">Summary</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"]
    template = TEMPLATE.read_text(encoding="utf-8")
    return template.replace("{{title}}", "dinolab: every grid").replace("{{body}}", "\n".join(body))


def write_index(pages: Sequence[tuple[Table, Path]], folder: os.PathLike) -> Path:
    """Write ``<folder>/index.html`` linking the pages (paths, made relative to the folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rel = [(t, Path(os.path.relpath(Path(p).resolve(), folder.resolve())).as_posix()) for t, p in pages]
    path = folder / "index.html"
    path.write_text(index_html(rel, time.strftime("generated %Y-%m-%d %H:%M")), encoding="utf-8")
    return path
