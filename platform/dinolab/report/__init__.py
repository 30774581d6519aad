"""Reports: the papers' ablation tables rebuilt from MLflow runs, and per-grid HTML dashboards.

``runs`` reads trial runs into pandas (SQL on a SQLite store, ``search_runs`` pages otherwise),
``table`` builds the structured table (cells over seeds, effects, agreement with the paper), ``render``
writes it as Markdown / LaTeX / CSV, ``dashboard`` as one self-contained HTML page, ``cli`` adds the
``dinolab report`` and ``dinolab dashboard`` commands.
"""

from .table import Cell, Column, Cost, Row, RowTrial, Stat, Summary, Table, build_table, report_table, tables_for_grids

__all__ = [
    "Cell", "Column", "Cost", "Row", "RowTrial", "Stat", "Summary", "Table", "build_table", "report_table",
    "tables_for_grids",
]
