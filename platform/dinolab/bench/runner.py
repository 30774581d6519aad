"""Run the figures, keep one result file per machine, rebuild BENCHMARKS.md from all of them.

bench/results/<machine>.json holds the latest record of every figure measured on that machine. A run
replaces only the figures it measured, on its own machine's file, so a CPU run never touches numbers only
a GPU machine can produce, and ``--only`` keeps the other figures. A ``--quick`` record (a smoke test)
never replaces a full one.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from .context import BenchContext
from .record import Record, now_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    name: str
    run: Callable[[BenchContext], Optional[Record]]
    cuda_only: bool = False


def _figures() -> dict[str, Figure]:
    import torch

    from .augment import augment_figure
    from .report import report_figure
    from .step import STEP_SPECS, gemm_figure, step_figure
    from .sweep import sweep_figure
    from .tracking import tracking_figure

    figs = [
        Figure("gemm_fp32", lambda ctx: gemm_figure(ctx, torch.float32)),
        Figure("gemm_bf16", lambda ctx: gemm_figure(ctx, torch.bfloat16), cuda_only=True),
        *(Figure(name, lambda ctx, name=name: step_figure(ctx, name), spec.cuda_only) for name, spec in STEP_SPECS.items()),
        Figure("augment_paper", augment_figure),
        Figure("sweep", sweep_figure),
        Figure("tracking", tracking_figure),
        Figure("report", report_figure),
    ]
    return {f.name: f for f in figs}


FIGURE_NAMES = (
    "gemm_fp32", "gemm_bf16", "step_vit_tiny4", "step_vit_tiny16_paper", "step_vit_small16_paper",
    "augment_paper", "sweep", "tracking", "report",
)


def check_names(names: Optional[Iterable[str]]) -> list[str]:
    """The figures to run, in the benchmark's order; ValueError naming the valid ones for an unknown name."""
    if not names:
        return list(FIGURE_NAMES)
    unknown = [n for n in names if n not in FIGURE_NAMES]
    if unknown:
        from dinolab.config import ConfigError

        raise ConfigError(f"--only: unknown figure(s) {', '.join(unknown)}; valid: {', '.join(FIGURE_NAMES)}")
    return [n for n in FIGURE_NAMES if n in set(names)]


def command_line(only=None, quick=False, repeats=None, threads=None, out=None, markdown=None, assemble=False) -> str:
    """The `dinolab bench` command that reproduces a run (recorded with every figure)."""
    parts = ["dinolab", "bench"]
    if assemble:
        parts.append("--assemble")
    if only:
        parts += ["--only", *only]
    if quick:
        parts.append("--quick")
    if repeats:
        parts += ["--repeats", str(repeats)]
    if threads:
        parts += ["--threads", str(threads)]
    if out is not None and str(out) != "bench/results":
        parts += ["--out", str(out)]
    if markdown is not None and str(markdown) != "BENCHMARKS.md":
        parts += ["--markdown", str(markdown)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- result files


def load_results(path: Path) -> dict:
    """{"machine": {...}, "updated": iso date, "records": {name: Record}} of one result file."""
    data = json.loads(Path(path).read_text())
    data["records"] = {k: Record.from_dict(v) for k, v in data.get("records", {}).items()}
    return data


def save_results(out_dir: Path, machine: dict, records: Iterable[Record]) -> Path:
    """Merge ``records`` into out_dir/<machine slug>.json (see the module docstring); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{machine['slug']}.json"
    current = load_results(path)["records"] if path.is_file() else {}
    for rec in records:
        old = current.get(rec.name)
        if rec.quick and old is not None and not old.quick:
            log.info("%s: kept the full-run record of %s (a --quick record does not replace it)", rec.name, old.date)
            continue
        current[rec.name] = rec
    order = {n: i for i, n in enumerate(FIGURE_NAMES)}
    ordered = dict(sorted(current.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    payload = {"machine": machine, "updated": now_iso(), "records": {k: v.to_dict() for k, v in ordered.items()}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- a run


@dataclass
class BenchOutcome:
    records: list[Record] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # figure -> "Error: message"
    skipped: list[str] = field(default_factory=list)  # CUDA-only figures on a machine without CUDA
    results_path: Optional[Path] = None
    markdown_path: Optional[Path] = None


def run_bench(names: Optional[Iterable[str]] = None, *, quick: bool = False, repeats: Optional[int] = None,
              threads: Optional[int] = None, out: Path = Path("bench/results"), markdown: Path = Path("BENCHMARKS.md"),
              command: Optional[str] = None, assemble_only: bool = False) -> BenchOutcome:
    """Run the chosen figures (all by default), save their records, rebuild the markdown from every result file."""
    from .markdown import write_markdown

    selected = check_names(names)
    for flag, value in (("--repeats", repeats), ("--threads", threads)):
        if value is not None and value < 1:
            from dinolab.config import ConfigError

            raise ConfigError(f"{flag} must be >= 1, got {value}")
    outcome = BenchOutcome()
    if not assemble_only:
        workdir = Path(tempfile.mkdtemp(prefix="dinolab-bench-"))
        kw = {"threads": threads} if threads else {}
        ctx = BenchContext(workdir=workdir, quick=quick, repeats=repeats,
                           command=command or command_line(names, quick, repeats, threads, out, markdown), **kw)
        try:
            figures = _figures()
            for name in selected:
                fig = figures[name]
                if fig.cuda_only and not ctx.cuda:
                    outcome.skipped.append(name)
                    continue
                log.info("bench: %s ...", name)
                try:
                    rec = fig.run(ctx)
                except Exception as e:  # noqa: BLE001 - one broken figure does not stop the others
                    log.exception("bench: %s failed", name)
                    outcome.failures[name] = f"{type(e).__name__}: {e}"
                    continue
                finally:
                    ctx.reset_threads()
                if rec is None:
                    outcome.skipped.append(name)
                    continue
                outcome.records.append(rec)
                log.info("bench: %s = %.4g %s (baseline %s, %s)", name, rec.value, rec.unit, rec.baseline,
                         "pass" if rec.passed else "n/a" if rec.passed is None else "FAIL")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if outcome.records:
            outcome.results_path = save_results(out, ctx.machine, outcome.records)
    outcome.markdown_path = write_markdown(out, markdown)
    return outcome


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def format_table(records: Iterable[Record]) -> str:
    """The console table of a run: one line per figure."""
    head = ["figure", "value", "unit", "baseline", "ratio", "target", "result", "spread (min-max)", "peak MiB"]
    rows = []
    for r in records:
        spread = f"{_num(r.spread.get('min'))}-{_num(r.spread.get('max'))}" if r.spread else "-"
        result = "n/a" if r.passed is None else "pass" if r.passed else "FAIL"
        rows.append([r.name, _num(r.value), r.unit, _num(r.baseline), _num(r.ratio), r.target, result, spread,
                     _num(r.peak_memory_mb)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
