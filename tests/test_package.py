"""The package stands alone: its data files load from inside it, a subcommand whose module fails to import says so,
and the wheel, installed into a fresh virtual environment outside the checkout, runs a trial, a report and a
dashboard from a folder of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dinolab.cli import main


def test_data_files_are_inside_the_package():
    from dinolab.config.paper_tables import PACKAGED, default_path
    from dinolab.report.dashboard import TEMPLATE

    package = Path(sys.modules["dinolab"].__file__).parent
    assert default_path() == PACKAGED and package in PACKAGED.parents  # not the ../shared copy
    assert package in Path(str(TEMPLATE)).parents and "{{body}}" in TEMPLATE.read_text(encoding="utf-8")


def test_the_readme_architecture_map_names_every_module_and_only_real_ones():
    """Each module of the package is in the README's module table, by its path or its folder (``eval/``), and
    every path the table names exists, so the map cannot drift from the code unnoticed."""
    import re

    package = Path(sys.modules["dinolab"].__file__).parent
    readme = (package.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):]
    table = "\n".join(line for line in section[:section.index("\n## ")].splitlines() if line.startswith("| `"))
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
    for name in named:
        where = package.parents[1] / name if name.startswith("scripts/") else package / name
        assert where.exists(), f"the README's architecture map names {name}, which does not exist"
    modules = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [m for m in modules if m not in named and not any(m.startswith(n) for n in named if n.endswith("/"))]
    assert not missing, f"modules the README's architecture map does not name: {missing}"


def test_bench_needs_the_checkout_only_for_the_demo(tmp_path):
    from dinolab.bench.context import BenchContext

    installed = BenchContext(workdir=tmp_path, checkout=None)
    with pytest.raises(RuntimeError, match="checkout"):
        installed.demo_experiment()
    assert installed.shared_file("datasets", "cifar10-jpeg.tar.gz") is None
    checkout = BenchContext(workdir=tmp_path)  # the tests run from the checkout
    assert checkout.demo_experiment().is_file()


def test_a_subcommand_whose_import_fails_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dinolab.sweep.cli", None)  # importing it now raises ImportError
    assert main(["sweep", "grid.yaml", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dinolab: error: the sweep command is unavailable: cannot import dinolab.sweep.cli")
    assert main(["status", "grid.yaml"]) == 1 and "status command is unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the other commands still refuse arguments they do not know
        main(["report", "grid.yaml", "--no-such-flag"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# ---------------------------------------------------------------- the wheel, installed outside the checkout

# The demo at one tiny epoch: 1 step of batch 16 on 64 images, a 1-epoch probe.
TINY_DEMO = {"train.epochs": 1, "train.steps_per_epoch": 1, "train.batch_size": 16, "data.synthetic_train": 64,
             "data.synthetic_test": 32, "eval.linear_epochs": 1, "train.progress": False}


def _venv_with_the_wheel(repo: Path, tmp: Path) -> Path:
    """Build the wheel from a copy of the sources (nothing is written into the checkout), install it alone into a new
    venv, then let that venv see this one's packages (the dependencies) after its own: a .pth line is appended to
    sys.path, and the .pth files of this venv (its editable dinolab) are not read. Nothing is downloaded."""
    src = tmp / "src"
    shutil.copytree(repo / "platform", src / "platform", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "wheels"), str(src)])
    (wheel,) = (tmp / "wheels").glob("dinolab-*.whl")
    venv = tmp / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _check([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    own = _check([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(own, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _check(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow  # ~1 min: a wheel build and install, then three commands
def test_the_wheel_runs_a_trial_a_report_and_a_dashboard_outside_the_checkout(repo_root, store, tmp_path):
    import yaml

    venv = _venv_with_the_wheel(repo_root, tmp_path)
    work = tmp_path / "work"  # the working folder: outside the checkout, with a copy of the demo
    work.mkdir()
    shutil.copy(repo_root / "experiments" / "demo.yaml", work / "demo.yaml")
    (work / "grid.yaml").write_text(yaml.safe_dump({
        "grid": "standalone", "base": "demo.yaml", "seeds": [0], "set": TINY_DEMO,
        "columns": [{"metric": "knn_top1", "label": "k-NN"}], "rows": [{"name": "demo"}],
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=store, MLFLOW_DISABLE_TELEMETRY="true")  # a migrated store: no 20 s of migrations

    def dinolab(*args) -> subprocess.CompletedProcess:
        return _check([str(venv / "bin" / "dinolab"), *args], cwd=work, env=env)

    where = _check([str(venv / "bin" / "python"), "-c", "import dinolab; print(dinolab.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the checkout's

    sets = [a for k, v in TINY_DEMO.items() for a in ("--set", f"{k}={str(v).lower()}")]
    run = dinolab("run", "demo.yaml", *sets)
    assert " FINISHED" in run.stdout and "knn_top1 " in run.stdout

    report = dinolab("report", "grid.yaml")
    (row,) = [line for line in report.stdout.splitlines() if line.startswith("| demo")]
    knn = next(line.split()[1] for line in run.stdout.splitlines() if line.strip().startswith("knn_top1 "))
    assert f"| {float(knn):.1f} |" in row  # the trial `dinolab run` logged, found by the grid's trial id

    page = Path(dinolab("dashboard", "grid.yaml").stdout.strip())
    assert page == Path("dashboards/standalone.html") and (work / page).read_text().startswith("<!DOCTYPE html>")
    assert 'data-row="demo"' in (work / page).read_text()

    # The YAML a user gives is safe-loaded by the installed command: a Python tag is refused, not executed (was
    # tests/test_trial_tracking.py's own subprocess of `python -m dinolab run`; merged here to pay for this test).
    marker = tmp_path / "executed"
    (work / "evil.yaml").write_text(f"base: demo.yaml\ntrain: !!python/object/apply:os.system ['touch {marker}']\n")
    evil = subprocess.run([str(venv / "bin" / "dinolab"), "run", "evil.yaml"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert evil.returncode == 2 and "not allowed" in evil.stderr
    assert not marker.exists()
