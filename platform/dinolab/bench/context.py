"""What every figure is given: quick or full, repeats, device, threads, the command, scratch space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .record import Record, available_cpus, machine_info, now_iso


DEMO = Path("experiments") / "demo.yaml"


def find_checkout() -> Optional[Path]:
    """The source checkout this package runs from (platform/dinolab/bench/ -> its root), or None when the package
    is installed without one (a wheel): it holds the demo experiment the sweep and tracking figures train."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / DEMO).is_file() else None


def require_checkout(checkout: Optional[Path], what: str) -> Path:
    """``checkout``, or a RuntimeError saying that ``what`` needs one (an installed dinolab has none)."""
    if checkout is None:
        raise RuntimeError(f"{what} needs a dinolab source checkout; this dinolab is installed without one")
    return checkout


def repo_root() -> Path:
    """The source checkout dinolab runs from (the GPU check reads its experiments/ and .gpu/)."""
    return require_checkout(find_checkout(), "this command")


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
    checkout: Optional[Path] = field(default_factory=find_checkout)  # None: an installed package

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def demo_experiment(self) -> Path:
        """The checkout's experiments/demo.yaml; the figures that train it cannot run from an installed package."""
        return require_checkout(self.checkout, f"this figure ({DEMO})") / DEMO

    def shared_file(self, *parts: str) -> Optional[Path]:
        """A file of the project's shared folder beside the checkout (``../shared/...``), or None when absent."""
        path = self.checkout.parent.joinpath("shared", *parts) if self.checkout is not None else None
        return path if path is not None and path.is_file() else None

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
