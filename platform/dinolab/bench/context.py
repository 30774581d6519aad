"""What every figure is given: quick or full, repeats, device, threads, the command, scratch space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .record import Record, available_cpus, machine_info, now_iso


def repo_root() -> Path:
    """The checkout dinolab runs from (platform/dinolab/bench/ -> the repository root)."""
    return Path(__file__).resolve().parents[3]


@dataclass
class BenchContext:
    """``repeats`` (when set) replaces every figure's own repeat count; ``quick`` shrinks every figure."""

    workdir: Path  # scratch folder (stores, grids, trials); removed by the runner
    quick: bool = False
    repeats: Optional[int] = None
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    threads: int = field(default_factory=available_cpus)
    command: str = "dinolab bench"
    machine: dict = field(default_factory=machine_info)
    cache: dict = field(default_factory=dict)  # measurements shared between figures (matmul rates)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reps(self, full: int, quick: int) -> int:
        """The repeat count: --repeats if given, else the figure's quick or full count."""
        return max(1, self.repeats if self.repeats else (quick if self.quick else full))

    def record(self, **kw) -> Record:
        """A Record stamped with this run's machine, date, command, mode and device."""
        return Record(machine=self.machine, date=now_iso(), command=self.command, quick=self.quick,
                      device=str(self.device), torch=torch.__version__, **kw)

    def reset_threads(self) -> None:
        """Every figure starts on the run's thread count (a trial trained in-process changes it)."""
        torch.set_num_threads(self.threads)
