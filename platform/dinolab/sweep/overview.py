"""Every grid in a tracking store with its trials' counts (``dinolab status`` without a grid file).

A grid is known by its parent run (tag ``dinolab.grid_parent``, which also records how many trials the
grid has and its storage root) and by the trials tagged ``dinolab.grid.<name>``. Each trial counts once,
in the state of its current run (running when its claim lock is held); trials without a run are missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dinolab import lifecycle
from dinolab.lifecycle import TrialState
from dinolab.track import contract

from . import store


@dataclass
class GridSummary:
    name: str
    trials: Optional[int] = None  # as the parent run says (None: no parent run)
    counts: dict[str, int] = field(default_factory=dict)
    parent_run_id: str = ""
    grid_file: str = ""

    @property
    def missing(self) -> int:
        return max(0, (self.trials or 0) - sum(self.counts.values()))


def grid_summaries(client, storage: Path) -> list[GridSummary]:
    """Every grid of the store; a trial's claim is looked for under its grid's storage root (else ``storage``)."""
    grids: dict[str, GridSummary] = {}
    roots: dict[str, Path] = {}
    for name, parent in store.parent_runs(client, store.active_experiment_ids(client)).items():
        total = parent.tags.get(contract.PARENT_TRIALS, "")
        grids[name] = GridSummary(name, int(total) if total.isdigit() else None, {}, parent.run_id,
                                  parent.tags.get(contract.PARENT_GRID_FILE, ""))
        if parent.tags.get(contract.PARENT_STORAGE):
            roots[name] = Path(parent.tags[contract.PARENT_STORAGE])
    for tid, records in store.trial_runs(client).items():
        current = store.current_run(records)
        if current is None:
            continue
        for name in sorted(current.grids):
            summary = grids.setdefault(name, GridSummary(name))
            state = lifecycle.state_of(current, lifecycle.claim_seen(roots.get(name, storage), tid))
            summary.counts[state] = summary.counts.get(state, 0) + 1
    return sorted(grids.values(), key=lambda g: g.name)


def format_summaries(summaries: list[GridSummary]) -> str:
    from dinolab.config.grid import _text_table

    if not summaries:
        return "no grids in this store yet (dinolab sweep <grid.yaml> records one)\n"
    states = [s for s in TrialState if s not in (TrialState.SUPERSEDED, TrialState.MISSING)
              and any(g.counts.get(s) for g in summaries)]
    header = ["grid", "trials", *states, TrialState.MISSING, "parent run", "grid file"]
    rows = [[g.name, "?" if g.trials is None else str(g.trials), *(str(g.counts.get(s, 0)) for s in states),
             str(g.missing) if g.trials is not None else "?", g.parent_run_id or "–", g.grid_file or "–"] for g in summaries]
    return _text_table(header, rows) + "\n"
