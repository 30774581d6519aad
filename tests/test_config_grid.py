"""Ablation grid expansion (config/grid.py) and the paper tables loader (config/paper_tables.py)."""

import shutil
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from dinolab.config import ConfigError, config_hash, trial_id
from dinolab.config.grid import Column, dry_run_table, expand_grid, load_grid
from dinolab.config.paper_tables import ENV_VAR, PACKAGED, PaperTable, load_paper_tables
from dinolab.data.datasets import data_fingerprint

from one_line import error_of

SHARED_TABLES = Path(__file__).parents[2] / "shared" / "reference" / "paper_tables.yaml"

BASE = """\
# a tiny experiment: ViT-Tiny/4 on 32/16 px crops of the synthetic data
model: {arch: vit_tiny, patch_size: 4}
crops: {global_size: 32, local_size: 16, local_number: 2}
dino: {out_dim: 32}
train: {epochs: 2, warmup_epochs: 1, batch_size: 16}
data: {synthetic_train: 20, synthetic_test: 10}
"""

ROWS = """\
rows:
  - name: A
    set: {dino.teacher: ema}
  - name: B
    default: true
    set: {dino.teacher: prev_epoch}
  - name: C
    set: {dino.centering: sinkhorn}
"""


@pytest.fixture
def grid_dir(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "base.yaml").write_text(BASE)
    (tmp_path / "ablations").mkdir()
    return tmp_path / "ablations"


def write_grid(folder: Path, body: str, name: str = "g.yaml", base: str = "../experiments/base.yaml") -> Path:
    text = (f"base: {base}\n" if base else "") + textwrap.dedent(body)
    path = folder / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- expansion


def test_rows_times_seeds_in_file_order(grid_dir):
    grid = expand_grid(write_grid(grid_dir, "seeds: [3, 1]\n" + ROWS))
    assert [(t.row, t.seed) for t in grid.trials] == [("A", 3), ("A", 1), ("B", 3), ("B", 1), ("C", 3), ("C", 1)]
    assert [r.name for r in grid.rows] == ["A", "B", "C"] and grid.default_row.name == "B"
    assert grid.name == "g" and grid.seeds == [3, 1]
    assert grid.base == (grid_dir.parent / "experiments" / "base.yaml").resolve()
    for t in grid.trials:
        assert t.config.train.seed == t.seed and t.overrides["train.seed"] == t.seed
    assert grid.trials_of("B")[0].config.dino.teacher == "prev_epoch"
    assert grid.trials_of("C")[0].config.dino.centering == "sinkhorn"
    assert grid.trials_of("C")[0].config.model.arch == "vit_tiny"  # from the base


def test_default_seed_and_columns(grid_dir):
    grid = expand_grid(write_grid(grid_dir, ROWS))
    assert grid.seeds == [0] and len(grid.trials) == 3
    assert grid.columns == [Column(metric="knn_top1", label="k-NN", agg="final", paper=None)]


def test_override_order_base_resources_set_row_cli_seed(grid_dir):
    body = """\
    seeds: [5]
    resources: {workers: 2, cpus_per_worker: 0.5}
    set: {train.epochs: 3, resources.workers: 4}
    rows:
      - name: from set
        set: {dino.teacher: ema}
      - name: from row
        set: {train.epochs: 4, dino.teacher: prev_epoch}
    """
    path = write_grid(grid_dir, body)
    by_row = {t.row: t for t in expand_grid(path).trials}
    assert by_row["from set"].config.train.epochs == 3  # grid set over the base's 2
    assert by_row["from row"].config.train.epochs == 4  # row set over grid set
    assert by_row["from set"].config.resources.workers == 4  # grid set over grid resources
    assert by_row["from set"].config.resources.cpus_per_worker == 0.5
    assert list(by_row["from row"].overrides) == [
        "resources.workers", "resources.cpus_per_worker", "train.epochs", "dino.teacher", "train.seed"]

    cli = expand_grid(path, overrides=["train.epochs=6", "resources.workers=1"])
    assert {t.config.train.epochs for t in cli.trials} == {6}  # the command line over rows
    assert {t.config.resources.workers for t in cli.trials} == {1}
    assert {t.config.train.seed for t in cli.trials} == {5}
    assert cli.cli_overrides == {"train.epochs": 6, "resources.workers": 1}


@pytest.mark.parametrize(
    "body, overrides, words",
    [
        ("set: {train.seed: 1}\n" + ROWS, (), "set: train.seed"),
        ("rows:\n  - {name: A, set: {train.seed: 1}}\n", (), "row 'A': set: train.seed"),
        ("axes: {values: {train.seed: [1, 2]}}\n", (), "axes.values: train.seed"),
        (ROWS, ("train.seed=4",), "--set train.seed"),
    ],
)
def test_train_seed_comes_only_from_seeds(grid_dir, body, overrides, words):
    assert words in error_of(expand_grid, write_grid(grid_dir, body), overrides)


def test_trial_ids_hash_config_and_data_fingerprint(grid_dir):
    grid = expand_grid(write_grid(grid_dir, "seeds: [0, 1]\n" + ROWS))
    for t in grid.trials:
        assert t.config_hash == config_hash(t.config)
        assert t.data_fingerprint == data_fingerprint(t.config.data)
        assert t.trial_id == trial_id(t.config, data_fingerprint(t.config.data))
    assert len(set(grid.trial_ids())) == 6


def test_runtime_overrides_keep_ids_and_identity_overrides_change_them(grid_dir, tmp_path):
    path = write_grid(grid_dir, ROWS)
    ids = expand_grid(path).trial_ids()
    moved = expand_grid(path, ["resources.workers=2", "train.device=cpu"], data_root=str(tmp_path / "elsewhere"))
    assert moved.trial_ids() == ids
    assert {t.config.data.root for t in moved.trials} == {str((tmp_path / "elsewhere").resolve())}
    changed = expand_grid(path, ["train.epochs=1", "train.warmup_epochs=0"]).trial_ids()
    assert not set(changed) & set(ids)


def test_paths_in_the_grid_are_relative_to_it_and_on_the_command_line_to_the_cwd(grid_dir, tmp_path, monkeypatch):
    path = write_grid(grid_dir, "set: {data.root: data/here}\n" + ROWS)
    monkeypatch.chdir(tmp_path)
    assert expand_grid(path).trials[0].config.data.root == str((grid_dir / "data" / "here").resolve())
    cli = expand_grid(path, ["data.root=mine"])
    assert cli.trials[0].config.data.root == str((tmp_path / "mine").resolve())
    assert cli.trials[0].overrides["data.root"] == str((tmp_path / "mine").resolve())


def test_axes_product_names_rows_and_varies_the_first_axis_slowest(grid_dir):
    body = """\
    seeds: [0, 1]
    axes:
      mode: product
      values: {model.patch_size: [8, 4], model.arch: [vit_tiny, vit_small]}
    """
    grid = expand_grid(write_grid(grid_dir, body))
    assert [r.name for r in grid.rows] == [
        "model.patch_size=8, model.arch=vit_tiny", "model.patch_size=8, model.arch=vit_small",
        "model.patch_size=4, model.arch=vit_tiny", "model.patch_size=4, model.arch=vit_small",
    ]
    assert grid.default_row is grid.rows[0]
    assert len(grid.trials) == 8
    t = grid.trials_of("model.patch_size=4, model.arch=vit_small")[1]
    assert (t.config.model.patch_size, t.config.model.arch, t.seed) == (4, "vit_small", 1)


def test_axes_zip_pairs_values_and_needs_equal_lengths(grid_dir):
    body = """\
    axes:
      mode: zip
      values: {crops.global_size: [32, 40], crops.local_size: [16, 20], model.patch_size: [4, 5]}
    """
    grid = expand_grid(write_grid(grid_dir, body))
    assert [(t.config.crops.global_size, t.config.crops.local_size, t.config.model.patch_size) for t in grid.trials] == [
        (32, 16, 4), (40, 20, 5)]
    assert grid.rows[1].name == "crops.global_size=40, crops.local_size=20, model.patch_size=5"
    bad = write_grid(grid_dir, "axes: {mode: zip, values: {model.patch_size: [4, 8], model.arch: [vit_tiny]}}\n")
    msg = error_of(expand_grid, bad)
    assert "zip" in msg and "model.patch_size: 2" in msg and "model.arch: 1" in msg


def test_first_runnable_row_is_the_default_when_none_is_marked(grid_dir):
    body = """\
    rows:
      - {name: paper only, reference_only: true}
      - {name: first run, set: {dino.teacher: ema}}
      - {name: second, set: {dino.teacher: prev_epoch}}
    """
    grid = expand_grid(write_grid(grid_dir, body))
    assert [r.name for r in grid.rows if r.default] == ["first run"]


def test_reference_only_rows_make_no_trials_and_may_name_unbuildable_settings(grid_dir):
    body = """\
    seeds: [0, 1]
    rows:
      - {name: run, set: {dino.teacher: ema}}
      - {name: ViL, reference_only: true, set: {model.arch: vil_small_not_in_timm}}
    """
    grid = expand_grid(write_grid(grid_dir, body))
    assert {t.row for t in grid.trials} == {"run"} and len(grid.trials) == 2
    assert grid.rows[1].reference_only and "reference only" in dry_run_table(grid) and "ViL" in dry_run_table(grid)


def test_load_grid_is_expand_grid(grid_dir):
    path = write_grid(grid_dir, ROWS)
    assert load_grid(path, ["train.epochs=3"]).trial_ids() == expand_grid(path, ["train.epochs=3"]).trial_ids()


# ------------------------------------------------------------------------------------------- errors

PAPER = """\
paper_table: dino_fig6_teacher_type
columns: [{metric: knn_top1, label: k-NN, paper: knn}]
"""


@pytest.mark.parametrize(
    "body, words",
    [
        ("row:\n  - {name: A}\n", ["unknown key 'row'", "did you mean rows?"]),
        ("rows:\n  - {name: A, sett: {dino.teacher: ema}}\n", ["row 'A'", "unknown key 'sett'", "did you mean set?"]),
        ("rows:\n  - {set: {dino.teacher: ema}}\n", ["rows[0]", "name"]),
        (ROWS + "axes: {values: {model.patch_size: [4]}}\n", ["rows: and axes: are exclusive"]),
        ("seeds: [0]\n", ["rows: missing"]),
        ("rows:\n  - {name: A, default: true}\n  - {name: B, default: true, set: {dino.teacher: prev_epoch}}\n",
         ["'A', 'B'", "exactly one row"]),
        ("rows:\n  - {name: A, default: true, reference_only: true}\n  - {name: B}\n", ["row 'A'", "reference_only"]),
        ("rows:\n  - {name: A}\n  - {name: A, set: {dino.teacher: prev_epoch}}\n", ["row 'A'", "duplicate row name"]),
        ("rows:\n  - {name: A, default: yes please}\n", ["row 'A'", "default", "true or false"]),
        ("paper_table: dino_t7_component\n" + ROWS, ["paper_table", "'dino_t7_component'", "dino_t7_components"]),
        ("columns: [{metric: knn_top1, agg: mean}]\n" + ROWS, ["columns[0].agg", "'mean'", "final, best, last3, last<k>"]),
        ("columns: [{metric: knn_top1, agg: last0}]\n" + ROWS, ["columns[0].agg", "'last0'"]),
        ("columns: [{metric: linear_top1, agg: best}]\n" + ROWS, ["columns[0].agg", "per-epoch", "linear_top1"]),
        ("columns: [{metric: knn}]\n" + ROWS, ["columns[0].metric", "'knn'", "did you mean knn_top1?"]),
        ("columns: [{metric: knn_top1, paper: knn}]\n" + ROWS, ["columns[0].paper", "paper_table"]),
        ("paper_table: dino_fig6_teacher_type\ncolumns: [{metric: knn_top1, paper: kNN}]\n" + ROWS,
         ["columns[0].paper", "'kNN'", "did you mean knn?"]),
        (PAPER + "rows:\n  - {name: A, paper: {linear: 1.0}, paper_row: 1}\n", ["row 'A'", "paper", "'linear'"]),
        (PAPER + "rows:\n  - {name: A, paper: {knn: 72.8}}\n", ["row 'A'", "paper_row"]),
        (PAPER + "rows:\n  - {name: A, paper: {knn: 72.8}, paper_row: 5}\n", ["row 'A'", "paper_row", "1..4"]),
        (PAPER + "rows:\n  - {name: A, paper: {knn: high}, paper_row: 4}\n", ["row 'A'", "paper.knn", "number"]),
        ("set: {dino.teachr: ema}\n" + ROWS, [": set", "'dino.teachr'", "did you mean dino.teacher?"]),
        ("set: {dino: 3}\n" + ROWS, [": set", "dino", "section"]),
        ("rows:\n  - {name: A, set: {modle.arch: vit_small}}\n", ["row 'A': set", "'modle.arch'", "did you mean model.arch?"]),
        ("rows:\n  - {name: A, set: {dino.teacher: foo}}\n", ["row 'A'", "dino.teacher", "'foo'", "'ema'"]),
        ("rows:\n  - {name: A, set: {train.epochs: 0}}\n", ["row 'A'", "train.epochs", "greater than or equal to 1"]),
        ("rows:\n  - {name: A, set: {dino.loss: mse}}\n", ["row 'A'", "dino.centering", "dino.loss=mse"]),
        ("rows:\n  - {name: A, set: {model.patch_size: 5}}\n", ["row 'A'", "crops.global_size=32", "multiple of 5"]),
        ("rows:\n  - {name: A, set: {model.arch: no_such_net}}\n", ["row 'A'", "model.arch", "no_such_net"]),
        ("rows:\n  - {name: A}\n  - {name: B, set: {dino.teacher: ema}}\n", ["row 'B'", "same trial as row 'A'"]),
        ("seeds: [0, 0]\n" + ROWS, ["seeds", "repeats"]),
        ("seeds: [-1]\n" + ROWS, ["seeds", ">= 0"]),
        ("seeds: []\n" + ROWS, ["seeds", "non-empty"]),
        ("grid: my grid!\n" + ROWS, ["grid", "'my grid!'"]),
        ("axes: {mode: cross, values: {model.patch_size: [4]}}\n", ["axes.mode", "'cross'", "product, zip"]),
        ("axes: {values: {model.patch_size: 4}}\n", ["axes.values.model.patch_size", "list"]),
        ("rows:\n  - {name: A, set: !!python/object/apply:os.getcwd []}\n", ["not allowed"]),
    ],
)
def test_errors_are_one_line_naming_file_row_and_key(grid_dir, body, words):
    path = write_grid(grid_dir, body)
    msg = error_of(expand_grid, path)
    assert str(path) in msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


def test_missing_or_lost_base(grid_dir):
    path = write_grid(grid_dir, ROWS, base="")
    msg = error_of(expand_grid, path)
    assert str(path) in msg and "base: missing" in msg
    path = write_grid(grid_dir, ROWS, base="../experiments/nope.yaml")
    msg = error_of(expand_grid, path)
    assert "base:" in msg and "nope.yaml" in msg and "not found" in msg


def test_command_line_errors_name_the_override(grid_dir):
    path = write_grid(grid_dir, ROWS)
    assert "'dino.teachr'" in error_of(expand_grid, path, ["dino.teachr=ema"])
    msg = error_of(expand_grid, path, ["dino.teacher=foo"])
    assert "dino.teacher" in msg and "'foo'" in msg and str(path) in msg
    assert "--set" in error_of(expand_grid, path, ["train.epochs"])


# ------------------------------------------------------------------------------------------- data


def _image_tree(root: Path, extra_pixels: int = 0) -> Path:
    for split in ("train", "test"):
        for cls, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8 + extra_pixels, 8), color).save(root / split / cls / "0.png")
    return root


def test_expansion_does_not_touch_the_data_and_ids_follow_its_content(grid_dir, tmp_path):
    (grid_dir.parent / "experiments" / "folder.yaml").write_text(BASE + "data: {name: imagefolder, root: /no/such/dir}\n")
    path = write_grid(grid_dir, "seeds: [0, 1]\n" + ROWS, base="../experiments/folder.yaml")

    grid = expand_grid(path)  # the folder does not exist: expansion still validates every trial
    assert len(grid.trials) == 6 and len({t.config_hash for t in grid.trials}) == 6
    with pytest.raises(ConfigError, match="data.root"):
        grid.trials[0].trial_id
    table = dry_run_table(grid)
    assert "?" in table and "/no/such/dir" in table

    first = _image_tree(tmp_path / "copy1")
    ids = expand_grid(path, data_root=str(first)).trial_ids()
    assert len(set(ids)) == 6
    second = tmp_path / "elsewhere" / "copy2"
    shutil.copytree(first, second)
    assert expand_grid(path, data_root=str(second)).trial_ids() == ids  # same content, another place
    other = _image_tree(tmp_path / "other", extra_pixels=4)
    assert not set(expand_grid(path, data_root=str(other)).trial_ids()) & set(ids)  # other content


def test_the_fingerprint_runs_once_per_data_section(grid_dir):
    calls = []

    def fingerprint(data_cfg):
        calls.append(data_cfg.synthetic_train)
        return f"fp{data_cfg.synthetic_train}"

    body = """\
    seeds: [0, 1, 2]
    rows:
      - {name: small, set: {data.synthetic_train: 20}}
      - {name: large, set: {data.synthetic_train: 40}}
    """
    grid = expand_grid(write_grid(grid_dir, body), fingerprint=fingerprint)
    assert calls == []  # not at expansion
    ids = grid.trial_ids() + grid.trial_ids()
    assert sorted(calls) == [20, 40]
    assert ids[0] == trial_id(grid.trials[0].config, "fp20")


# ------------------------------------------------------------------------------------------- dry run


def test_dry_run_table_lists_every_trial_with_its_status(grid_dir):
    body = """\
    seeds: [0, 1]
    set: {train.epochs: 3}
    rows:
      - {name: A}
      - {name: B, default: true, set: {dino.teacher: prev_epoch}}
      - {name: C, set: {dino.centering: sinkhorn}}
    """
    grid = expand_grid(write_grid(grid_dir, body))
    ids = grid.trial_ids()
    text = dry_run_table(grid, {ids[0]: "finished", ids[3]: "failed"})
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row"))
    assert lines[header].split() == ["row", "seed", "overrides", "trial", "id", "status"]
    rows = lines[header + 2:header + 2 + len(ids)]
    assert len(rows) == 6
    for line, t, status in zip(rows, grid.trials, ["finished", "missing", "missing", "failed", "missing", "missing"]):
        assert line.startswith(t.row) and t.trial_id in line and line.endswith(status)
    assert "(base)" in rows[0]  # row A has no overrides
    assert "B (default)" in rows[2] and "dino.teacher=prev_epoch" in rows[2]
    assert "train.epochs=3" in text and "6 trials" in text
    assert dry_run_table(grid).count("missing") == 6


# ------------------------------------------------------------------------------------------- paper tables


def test_packaged_paper_tables_are_the_shared_file():
    if not SHARED_TABLES.is_file():
        pytest.skip("../shared is not present")
    assert PACKAGED.read_bytes() == SHARED_TABLES.read_bytes()


def test_paper_tables_from_env_var_and_packaged_copy(tmp_path, monkeypatch):
    custom = tmp_path / "tables.yaml"
    custom.write_text("tables:\n- id: t\n  title: T\n  columns: [a, b]\n  rows:\n    - [x, 1.5]\n    - [y, null]\n")
    monkeypatch.setenv(ENV_VAR, str(custom))
    tables = load_paper_tables()
    assert list(tables) == ["t"]
    assert tables["t"].records() == [{"a": "x", "b": 1.5}, {"a": "y", "b": None}]
    assert tables["t"].value(1, "b") == 1.5
    with pytest.raises(ValueError, match="1..2"):
        tables["t"].value(3, "b")

    packaged = load_paper_tables(PACKAGED)
    t7 = packaged["dino_t7_components"]
    assert isinstance(t7, PaperTable) and t7.columns[-2:] == ("knn", "linear")
    assert t7.value(1, "knn") == 72.8 and t7.value(9, "method") == "SwAV"
    assert len(packaged) == 57


@pytest.mark.parametrize(
    "text, words",
    [
        ("tables:\n- id: t\n  columns: [a, b]\n  rows:\n    - [1]\n", ["row 1", "1 values for 2 columns"]),
        ("tables:\n- {id: t, columns: [a], rows: []}\n- {id: t, columns: [a], rows: []}\n", ["duplicate table id t"]),
        ("tables: 3\n", ["tables"]),
    ],
)
def test_malformed_paper_tables(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = error_of(load_paper_tables, path)
    for word in words:
        assert word in msg


def test_grid_validates_against_the_given_paper_tables(grid_dir, tmp_path):
    custom = tmp_path / "tables.yaml"
    custom.write_text("tables:\n- id: mine\n  title: M\n  columns: [name, score]\n  rows:\n    - [A, 1.0]\n")
    body = """\
    paper_table: mine
    columns: [{metric: knn_top1, paper: score}]
    rows:
      - {name: A, paper: {score: 1.0}, paper_row: 1}
    """
    grid = expand_grid(write_grid(grid_dir, body), paper_tables=load_paper_tables(custom))
    assert grid.paper_table == "mine" and grid.rows[0].paper == {"score": 1.0} and grid.rows[0].paper_row == 1
    assert "paper_table" in error_of(expand_grid, write_grid(grid_dir, body, name="h.yaml"))  # not in the real file


# ------------------------------------------------------------------------------------------- extends


def test_extends_replaces_keys_merges_set_and_changes_rows_by_name(grid_dir, tmp_path):
    write_grid(grid_dir, "seeds: [0, 1]\nset: {train.epochs: 3, data.root: here}\n" + ROWS, name="parent.yaml")
    (tmp_path / "twin").mkdir()
    body = """\
    extends: ../ablations/parent.yaml
    seeds: [5]
    set: {train.epochs: 1, train.warmup_epochs: 0}
    row_changes:
      A: {name: A2, set: {model.patch_size: 8}, labels: {x: 1}}
      C: {drop: true}
    """
    grid = expand_grid(write_grid(tmp_path / "twin", body, base=""))
    assert grid.name == "g" and grid.seeds == [5]  # the name is the file's own; seeds replaced
    assert [r.name for r in grid.rows] == ["A2", "B"] and grid.default_row.name == "B"
    a2 = grid.trials_of("A2")[0].config
    assert (a2.model.patch_size, a2.dino.teacher, a2.train.epochs, a2.train.warmup_epochs) == (8, "ema", 1, 0)
    assert grid.rows[0].labels == {"x": 1}
    assert a2.data.root == str((grid_dir / "here").resolve())  # relative to the file that set it
    assert grid.base == (grid_dir.parent / "experiments" / "base.yaml").resolve()


@pytest.mark.parametrize(
    "body, words",
    [
        ("extends: parent.yaml\nrow_changes: {Z: {drop: true}}\n", ["row_changes", "unknown row of the extended grid 'Z'"]),
        ("extends: parent.yaml\nrow_changes: {A: {sett: {}}}\n", ["row 'A'", "unknown key 'sett'", "did you mean set?"]),
        ("extends: parent.yaml\nrow_changes: {A: {drop: maybe}}\n", ["row 'A': drop", "true or false"]),
        ("extends: nope.yaml\n", ["extends:", "nope.yaml", "not found"]),
        ("extends: g.yaml\n", ["extends: forms a cycle"]),
        ("row_changes: {A: {drop: true}}\n" + ROWS, ["row_changes", "extends:"]),
    ],
)
def test_extends_errors_are_one_line(grid_dir, body, words):
    write_grid(grid_dir, ROWS, name="parent.yaml")
    path = write_grid(grid_dir, body, base="")
    msg = error_of(expand_grid, path)
    assert str(path) in msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
