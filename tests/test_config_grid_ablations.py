"""Every ablation file and experiment loads and expands; every paper row they name is in the paper tables.

Expansion must not need the data: the ImageNet / CIFAR bases point at folders absent here.
"""

from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from dinolab.config import load_experiment
from dinolab.config.grid import expand_grid

ROOT = Path(__file__).parents[1]
ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SHARED_TABLES = Path(__file__).parents[2] / "shared" / "reference" / "paper_tables.yaml"
PACKAGED_TABLES = ROOT / "platform" / "dinolab" / "config" / "paper_tables.yaml"

_GRIDS: dict = {}


def _no_data(data_cfg):
    raise AssertionError(f"expansion read the data ({data_cfg.name} at {data_cfg.root})")


def grid_of(path: Path):
    """One expansion per file for the whole module; reading the data during it fails the test."""
    if path not in _GRIDS:
        _GRIDS[path] = expand_grid(path, fingerprint=_no_data)
    return _GRIDS[path]


@lru_cache(maxsize=None)
def _raw_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def raw_of(path: Path) -> dict:
    return yaml.safe_load(_raw_text(path))


def merged_raw_of(path: Path) -> dict:
    """The raw file with the file it ``extends:`` under it: its keys replace, its row_changes rename, drop or
    change reference_only (only what the counts below read; written apart from dinolab.config.grid)."""
    raw = raw_of(path)
    if "extends" not in raw:
        return raw
    merged = {**merged_raw_of(path.parent / raw["extends"]), **raw}
    changes = raw.get("row_changes", {})
    rows = [{**r, **changes.get(r["name"], {})} for r in merged["rows"]]
    merged["rows"] = [r for r in rows if not r.get("drop", False)]
    return merged


@lru_cache(maxsize=1)
def paper_tables() -> dict:
    """The shared file (else the package's copy) read directly (not through dinolab.config.paper_tables), once."""
    path = SHARED_TABLES if SHARED_TABLES.is_file() else PACKAGED_TABLES
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {t["id"]: t for t in data["tables"]}


def test_the_library_is_there():
    names = {p.stem for p in ABLATIONS}
    tables = {"dino_table7", "dino_fig6_teachers", "dino_table8_multicrop", "dino_table9_batch", "dino_fig5_patch",
              "dino_appD_center_momentum", "dino_appD_teacher_temp", "dino_table2_same_arch", "esvit_table4_arch",
              "esvit_table5_window", "dino_appC_bn_in_head"}
    assert {"demo"} | tables | {f"{t}_cifar" for t in tables} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_loads(path):
    cfg = load_experiment(path)
    assert path.read_text(encoding="utf-8").startswith("# ")
    assert cfg.name


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_expands(path):
    grid = grid_of(path)
    raw = merged_raw_of(path)

    # Counted from the raw files, independently of the expansion code.
    seeds = raw.get("seeds", [0])
    if "rows" in raw:
        runnable = [r for r in raw["rows"] if not r.get("reference_only", False)]
        n_rows = len(runnable)
    else:
        n_rows = 1
        values = list(raw["axes"]["values"].values())
        for v in values:
            n_rows = n_rows * len(v) if raw["axes"].get("mode", "product") == "product" else len(v)
    assert len(grid.trials) == n_rows * len(seeds)
    assert {(t.row, t.seed) for t in grid.trials} == {(r.name, s) for r in grid.rows if not r.reference_only for s in seeds}

    assert len({r.name for r in grid.rows}) == len(grid.rows)
    assert len({t.config_hash for t in grid.trials}) == len(grid.trials)  # no two trials are the same run
    defaults = [r for r in grid.rows if r.default]
    assert len(defaults) == 1 and not defaults[0].reference_only
    assert grid.name == path.stem
    for t in grid.trials:
        assert t.config.train.seed == t.seed


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_header_gives_its_command_and_what_it_shows(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 3, "the file must begin with a comment block"
    assert f"Command: dinolab sweep ablations/{path.name}" in text
    assert f"dinolab report ablations/{path.name}" in text
    assert "Shows:" in text
    if raw_of(path).get("paper_table"):
        assert "Paper (" + raw_of(path)["paper_table"] in text


def test_demo_grid_runs_on_the_embedded_data_with_ids():
    grid = expand_grid(ROOT / "ablations" / "demo.yaml")
    assert [r.name for r in grid.rows] == ["DINO (centering)", "no centering"]
    assert grid.default_row.name == "DINO (centering)" and grid.seeds == [0, 1, 2]
    assert {t.config.data.name for t in grid.trials} == {"synthetic"}
    assert {t.config.resources.gpus_per_worker for t in grid.trials} == {0}
    ids = grid.trial_ids()  # synthetic data: the fingerprint needs no folder
    assert len(set(ids)) == 6


@pytest.mark.parametrize("path", [p for p in ABLATIONS if p.stem.endswith("_cifar")], ids=lambda p: p.name)
def test_cifar_version_has_the_same_rows_as_its_table(path):
    twin = path.with_name(path.stem[: -len("_cifar")] + ".yaml")
    assert raw_of(path)["extends"] == twin.name  # a delta over its ImageNet twin, not a copy
    full, small = grid_of(twin), grid_of(path)
    assert small.base == (ROOT / "experiments" / "cifar10_vit_tiny.yaml").resolve()
    assert small.paper_table == full.paper_table
    pick = lambda grid: [(r.paper_row, r.paper, r.reference_only) for r in grid.rows]  # noqa: E731
    assert pick(small) == pick(full)
    for t in small.trials:
        assert t.config.data.name == "imagefolder" and t.config.crops.global_size <= 70


@pytest.mark.parametrize("path", [p for p in ABLATIONS if merged_raw_of(p).get("paper_table")], ids=lambda p: p.name)
def test_paper_rows_and_columns_exist_in_the_paper_tables(path):
    """Every paper_row is a row, every column's paper name a column, of the grid's table in paper_tables.yaml (the
    numbers come from there: rows carry no copies); a row's own ``paper`` values, where given, equal the table's."""
    raw = merged_raw_of(path)
    table = paper_tables()[raw["paper_table"]]
    for column in raw["columns"]:
        assert column.get("paper") is None or column["paper"] in table["columns"], column
    for row in raw["rows"]:
        assert "paper_row" in row, f"{path.name} row {row['name']!r} names no paper_row"
        assert 1 <= row["paper_row"] <= len(table["rows"]), f"{path.name} row {row['name']!r}"
        cells = table["rows"][row["paper_row"] - 1]
        for column, value in row.get("paper", {}).items():
            assert cells[table["columns"].index(column)] == value, f"{path.name} row {row['name']!r} paper.{column}"


# Shrinks any trial to a CPU smoke run: embedded data, one step, a narrow head, no probe. Architecture,
# patch size, crops, teacher, loss, centering and the other row knobs stay as each row sets them.
SMOKE = [
    "data.name=synthetic", "data.synthetic_train=16", "data.synthetic_test=10", "data.synthetic_classes=2",
    "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=4", "train.warmup_epochs=0",
    "train.progress=false", "train.threads=1", "train.device=cpu", "data.num_workers=0", "dino.warmup_teacher_temp_epochs=0",
    "dino.out_dim=16", "dino.hidden_dim=16", "dino.bottleneck_dim=8", "eval.linear=false",
]
SMALL = [p for p in ABLATIONS if p.stem.endswith("_cifar") or p.stem.startswith("demo")]


@pytest.mark.slow  # ~3.5 min in all here: ResNet-50, Swin, PvT and ViT-S rows build and step on the CPU
@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.name)
def test_small_ablation_rows_run_as_cpu_smoke_runs(path, tmp_path):
    """Every row of the small grids trains one step and evaluates on the CPU (one seed per row)."""
    import math

    from dinolab.config import apply_overrides, build_config, config_to_dict
    from dinolab.track.reporter import MemoryReporter
    from dinolab.train.loop import train

    grid = expand_grid(path, fingerprint=lambda data_cfg: "smoke")  # the bases point at data absent here
    first = {}
    for t in grid.trials:
        first.setdefault(t.row, t)
    assert set(first) == {r.name for r in grid.rows if not r.reference_only}
    for row, trial in first.items():
        # Shrunk after expansion: rows that differ only in a shrunk knob (Table 9's batch sizes) stay rows.
        cfg = build_config(apply_overrides(config_to_dict(trial.config), SMOKE), source=f"{path.name} row {row!r}")
        reporter = MemoryReporter()
        result = train(cfg, reporter, workdir=tmp_path / trial.trial_id, resume=False)
        loss = reporter.history("loss")
        assert len(loss) == 1 and math.isfinite(loss[0]), f"{path.name} row {row!r}: loss {loss}"
        assert 0.0 <= result.final["knn_top1"] <= 100.0, f"{path.name} row {row!r}"


def test_every_grid_report_fits_120_columns(tmp_path):
    """Every shipped grid's default report, from runs logged as trials log them (``report.synthetic``), is at
    most 120 characters wide and a baseline column (random init) has no effect and no collapse flag.

    Runs for two rows of each grid (its default row and the next it runs, whose effect against the default is
    measured: a cell's width does not depend on its row, and the other rows' cells read ``not run``, narrower than
    a value), first two seeds (a 3-seed grid then shows ``(n=2)``, the widest form of a cell), the first seed of
    the second row collapsed."""
    import random

    from mlflow.tracking import MlflowClient

    from dinolab.report.fit import widest_line
    from dinolab.report.render import parse_markdown_table, render_markdown
    from dinolab.report.runs import load_runs
    from dinolab.report.synthetic import log_trial_run, new_sqlite_store
    from dinolab.report.table import build_table
    from dinolab.track import contract as c

    uri = new_sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("dinolab")
    rng = random.Random(0)
    grids = [grid_of(p) for p in ABLATIONS]
    seen: set[str] = set()  # a trial several grids share is one run (as the sweep runs it once)
    for grid in grids:
        runnable = [r.name for r in grid.rows if not r.reference_only]
        default = next((r.name for r in grid.rows if r.default), runnable[0])
        logged_rows = [default] + [r for r in runnable if r != default][:1]
        logged = [t for t in grid.trials if t.row in logged_rows and t.seed in grid.seeds[:2] and t.config_hash not in seen]
        seen.update(t.config_hash for t in logged)
        for t in logged:
            knn = [30 + 40 * rng.random() for _ in range(3)]
            history = {c.LOSS: [6.0, 5.5, 5.1], c.TEACHER_ENTROPY: [6.5 * rng.random() for _ in range(3)],
                       c.KL: [rng.random() for _ in range(3)], c.IMAGES_PER_S: [2000 * rng.random()] * 3, c.KNN_TOP1: knn}
            final = {c.KNN_TOP1: knn[-1], c.LINEAR_TOP1: 40 + 40 * rng.random(), c.KNN_TOP1_RANDOM_INIT: 10 + rng.random(),
                     c.THROUGHPUT: 3000 * rng.random(), c.WALL_TIME_S: 86400 * rng.random(),
                     c.CPU_HOURS: 0.0, c.GPU_HOURS: 500 * rng.random(), c.PEAK_RSS_MB: 60000 * rng.random(),
                     c.CUDA_PEAK_MB: 80000 * rng.random()}
            collapsed = logged_rows.index(t.row) == 1 and t.seed == grid.seeds[0]
            log_trial_run(client, exp, t.config, f"synthetic-{t.config_hash}", history=history, final=final, device="cuda",
                          collapsed=collapsed, collapse_reason="teacher entropy 0.0" if collapsed else "")
    runs = load_runs(uri)
    for grid in grids:
        keys = {id(t): (None, t.config_hash) for t in grid.trials}  # no data here: trials found by config hash
        md = render_markdown(build_table(grid, runs, tracking_uri=uri, keys=keys, now=0.0))
        assert widest_line(md) <= 120, (grid.name, md)
        blocks = [parse_markdown_table(chunk) for chunk in md.split("\n\n") if chunk.startswith("|")]  # a wide grid: blocks
        rows = [{k: v for b in blocks for k, v in b[i].items()} for i in range(len(grid.rows))]
        assert all(len(b) == len(grid.rows) for b in blocks) and "GPU-h" in rows[0], grid.name
        for spec in grid.columns:
            if c.is_random_init(spec.metric):
                assert f"{spec.label} Δ" not in rows[0] and not any(r[spec.label].endswith("†") for r in rows)
                assert any(r[f"{s.label}"].endswith("†") for r in rows for s in grid.columns if s is not spec)
