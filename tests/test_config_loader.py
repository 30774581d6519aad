"""Experiment YAML loading: base chains, --set, one-line errors naming the key, safe YAML, paths, identity."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dinolab.config import (
    ConfigError, ExperimentConfig, build_config, config_hash, config_to_dict, dump_config, flatten, identity_dict,
    load_experiment, runtime_dict, trial_id,
)
from dinolab.config.loader import parse_override
from dinolab.config.schema import DinoConfig, TrainConfig

from one_line import error_of

# A tiny valid experiment: ViT-Tiny/4 on 32/16 px crops of the synthetic data.
TINY = """\
model: {arch: vit_tiny, patch_size: 4}
crops: {global_size: 32, local_size: 16, local_number: 2}
dino: {out_dim: 32}
train: {epochs: 2, warmup_epochs: 1}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------------- base chains


def test_base_chain_merges_grandparent_parent_child(tmp_path):
    write(tmp_path / "bases" / "grand.yaml", TINY + "dino: {out_dim: 32, teacher_temp: 0.05}\n")
    write(tmp_path / "bases" / "parent.yaml", "base: grand.yaml\ntrain: {epochs: 7}\ndino: {out_dim: 64}\n")
    child = write(tmp_path / "exp" / "child.yaml", "base: ../bases/parent.yaml\ntrain: {batch_size: 32}\n")

    cfg = load_experiment(child)

    assert cfg.train.epochs == 7  # parent over grandparent
    assert cfg.train.batch_size == 32  # child
    assert cfg.dino.out_dim == 64  # parent replaces a key of a section ...
    assert cfg.dino.teacher_temp == 0.05  # ... and keeps the grandparent's other keys
    assert cfg.model.arch == "vit_tiny" and cfg.crops.local_number == 2
    assert cfg.dino.teacher == DinoConfig.model_fields["teacher"].default  # untouched: the schema's default
    assert cfg.name == "child"  # default name = the file's stem


def test_base_cycle_and_missing_base_are_errors(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    assert "cycle" in error_of(load_experiment, tmp_path / "a.yaml")
    lost = write(tmp_path / "lost.yaml", "base: nowhere.yaml\n")
    assert "nowhere.yaml" in error_of(load_experiment, lost) and "not found" in error_of(load_experiment, lost)


def test_invalid_yaml_and_non_mapping_top_level(tmp_path):
    bad = write(tmp_path / "bad.yaml", "model: {arch: vit_tiny\n")
    assert "invalid YAML" in error_of(load_experiment, bad)
    listy = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    assert "mapping" in error_of(load_experiment, listy)


# ------------------------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train.epochs=10", "train.epochs", 10),
        ("crops.global_scale=[0.14, 1]", "crops.global_scale", [0.14, 1]),
        ("model.arch=vit_base", "model.arch", "vit_base"),
        ("dino.predictor=true", "dino.predictor", True),
        ("model.window_size=null", "model.window_size", None),
        ("tracking.uri=http://host:5000", "tracking.uri", "http://host:5000"),  # only the first '=' splits
        ("train.lr=5.0e-4", "train.lr", 5.0e-4),
    ],
)
def test_parse_override_values(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train..epochs=3", "1train.epochs=3", "train.epochs]=3"])
def test_parse_override_rejects_malformed(text):
    assert "--set" in error_of(parse_override, text)


def test_overrides_win_over_the_file_and_later_ones_win(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY)
    cfg = load_experiment(exp, ["train.epochs=3", "crops.global_scale=[0.14, 1]", "train.epochs=5", "train.lr=5e-4"])
    assert cfg.train.epochs == 5
    assert cfg.crops.global_scale == (0.14, 1.0)
    assert cfg.train.lr == pytest.approx(5e-4)  # YAML 1.1 reads 5e-4 as text; the schema converts it


# ------------------------------------------------------------------------------------------- errors


def test_unknown_key_suggests_the_nearest_name(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY + "dino: {teachr: ema}\n")
    msg = error_of(load_experiment, exp)
    assert "unknown key dino.teachr" in msg and "did you mean dino.teacher?" in msg and str(exp) in msg

    msg = error_of(load_experiment, write(tmp_path / "e2.yaml", TINY), ["trian.epochs=3"])
    assert "trian" in msg and "did you mean train?" in msg


def test_wrong_type_names_the_key_and_value(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY)
    msg = error_of(load_experiment, exp, ["train.epochs=ten"])
    assert "train.epochs" in msg and "'ten'" in msg
    msg = error_of(load_experiment, exp, ["crops.global_scale=0.5"])
    assert "crops.global_scale" in msg


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.epochs=0", "train.epochs", "greater than or equal to 1"),
        ("dino.momentum=1.5", "dino.momentum", "less than or equal to 1"),
        ("model.drop_path_rate=1.0", "model.drop_path_rate", "less than 1"),
        ("crops.global_scale=[0.6, 0.3]", "crops.global_scale", "0 < low <= high <= 1"),
        ("data.synthetic_object_area=[0.2, 0.9]", "data.synthetic_object_area", "0 < low <= high < 0.6"),
        ("data.synthetic_objects=[3, 2]", "data.synthetic_objects", "1 <= min <= max <= 8"),
    ],
)
def test_out_of_range_names_the_key(tmp_path, override, key, words):
    msg = error_of(load_experiment, write(tmp_path / "e.yaml", TINY), [override])
    assert key in msg and words in msg


def test_literal_choices_are_listed(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY)
    msg = error_of(load_experiment, exp, ["dino.teacher=momentum"])
    assert "dino.teacher" in msg and "'momentum'" in msg
    for choice in DinoConfig.model_fields["teacher"].annotation.__args__:
        assert repr(choice) in msg
    msg = error_of(load_experiment, exp, ["train.optimizer=lars"])
    assert "train.optimizer" in msg and "'adamw'" in msg and "'sgd'" in msg


def test_cross_field_check_names_both_keys(tmp_path):
    msg = error_of(load_experiment, write(tmp_path / "e.yaml", TINY), ["dino.loss=mse"])
    assert "dino.centering" in msg and "dino.loss=mse" in msg


# ------------------------------------------------------------------------------------------- safe YAML


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        '!!python/object/apply:subprocess.call [["touch", "{marker}"]]',
        "!!python/name:os.system",
    ],
)
def test_python_tags_are_refused_without_running_anything(tmp_path, tag):
    marker = tmp_path / "executed"
    exp = write(tmp_path / "e.yaml", TINY + "name: " + tag.format(marker=marker) + "\n")
    msg = error_of(load_experiment, exp)
    assert "not allowed" in msg and str(exp) in msg
    assert not marker.exists()

    msg = error_of(load_experiment, write(tmp_path / "ok.yaml", TINY), ["name=" + tag.format(marker=marker)])
    assert "cannot parse" in msg
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- paths


def test_data_root_tilde_and_env_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATASETS", str(tmp_path / "sets"))
    exp = write(tmp_path / "e.yaml", TINY + "data: {name: imagefolder, root: ~/data/c10}\n")
    assert load_experiment(exp).data.root == str((tmp_path / "home" / "data" / "c10").resolve())
    exp = write(tmp_path / "e2.yaml", TINY + "data: {name: imagefolder, root: $DATASETS/c10}\n")
    assert load_experiment(exp).data.root == str((tmp_path / "sets" / "c10").resolve())


def test_relative_data_root_is_relative_to_the_yaml_that_set_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    write(tmp_path / "bases" / "b.yaml", TINY + "data: {name: imagefolder, root: ../datasets/c10}\n")
    child = write(tmp_path / "exps" / "deep" / "child.yaml", "base: ../../bases/b.yaml\n")
    assert load_experiment(child).data.root == str((tmp_path / "datasets" / "c10").resolve())

    own = write(tmp_path / "exps" / "own.yaml", TINY + "data: {name: imagefolder, root: local/c10}\n")
    assert load_experiment(own).data.root == str((tmp_path / "exps" / "local" / "c10").resolve())


def test_data_root_override_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    exp = write(tmp_path / "exps" / "e.yaml", TINY + "data: {name: imagefolder, root: /somewhere}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_experiment(exp, ["data.root=mine/c10"])
    assert cfg.data.root == str((tmp_path / "mine" / "c10").resolve())


def test_non_synthetic_data_needs_a_root_but_not_an_existing_folder(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY + "data: {name: imagefolder}\n")
    assert "data.root" in error_of(load_experiment, exp)
    cfg = load_experiment(exp, [f"data.root={tmp_path / 'does-not-exist'}"])  # existence is checked at launch
    assert cfg.data.root.endswith("does-not-exist")


# ------------------------------------------------------------------------------------------- identity


RUNTIME_CHANGES = [
    "name=other", "train.device=cpu", "train.precision=fp32", "train.threads=3", "train.keep_checkpoints=5",
    "train.progress=false", "data.root=/elsewhere", "data.num_workers=6",
    "tracking.uri=http://host:5000", "tracking.experiment=x", "tracking.run_name=r", "resources.workers=2",
    "resources.cpus_per_worker=3", "resources.gpus_per_worker=1",
]


def test_identity_and_runtime_partition_the_config(tmp_path):
    cfg = load_experiment(write(tmp_path / "e.yaml", TINY))
    everything = set(flatten(config_to_dict(cfg)))
    identity = set(flatten(identity_dict(cfg)))
    runtime = set(flatten(runtime_dict(cfg)))
    assert identity | runtime == everything and not identity & runtime
    assert {o.split("=")[0] for o in RUNTIME_CHANGES} <= runtime
    assert {"model.arch", "model.patch_size", "dino.teacher", "dino.centering", "crops.local_number", "train.seed",
            "train.epochs", "train.batch_size", "train.steps_per_epoch", "data.name", "data.train_limit",
            "eval.knn_k"} <= identity


def test_config_hash_ignores_runtime_fields_and_sees_identity_fields(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY)
    cfg = load_experiment(exp)
    moved = load_experiment(exp, RUNTIME_CHANGES)
    assert moved != cfg
    assert config_hash(moved) == config_hash(cfg)
    assert trial_id(moved, "fp") == trial_id(cfg, "fp")
    for change in ("train.seed=1", "dino.teacher=prev_epoch", "crops.local_number=3", "train.epochs=3"):
        assert config_hash(load_experiment(exp, [change])) != config_hash(cfg), change
    assert trial_id(cfg, "fp-a") != trial_id(cfg, "fp-b")  # the data's fingerprint is part of the trial id
    assert len(config_hash(cfg)) == 12 and len(trial_id(cfg, "fp")) == 16
    int(config_hash(cfg), 16), int(trial_id(cfg, "fp"), 16)


def test_config_hash_ignores_key_order_and_how_a_value_was_written(tmp_path):
    a = write(tmp_path / "a.yaml", TINY + "crops: {global_size: 32, local_size: 16, local_number: 2, global_scale: [0.4, 1]}\n")
    b = write(tmp_path / "b.yaml", textwrap.dedent("""\
        train: {epochs: 2, warmup_epochs: 1}
        crops: {global_scale: [0.4, 1.0], local_number: 2, local_size: 16, global_size: 32}
        dino: {out_dim: 32}
        model: {patch_size: 4, arch: vit_tiny}
        """))
    assert config_hash(load_experiment(a)) == config_hash(load_experiment(b))


def test_trial_id_is_stable_across_interpreters(tmp_path):
    exp = write(tmp_path / "e.yaml", TINY)
    here = trial_id(load_experiment(exp), "fingerprint")
    code = (
        "import sys; from dinolab.config import ExperimentConfig, trial_id; import yaml; "
        "cfg = ExperimentConfig.model_validate(yaml.safe_load(open(sys.argv[1]))); print(trial_id(cfg, 'fingerprint'))"
    )
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(load_experiment(exp)))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1] / "platform")}
    out = subprocess.run([sys.executable, "-c", code, str(dumped)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == here


def test_dumped_config_round_trips(tmp_path):
    cfg = load_experiment(write(tmp_path / "e.yaml", TINY), ["crops.global_scale=[0.14, 1]", "data.root=/x"])
    again = build_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert json.loads(json.dumps(config_to_dict(cfg))) == config_to_dict(cfg)


def test_schema_defaults_are_the_only_defaults(tmp_path):
    cfg = load_experiment(write(tmp_path / "empty.yaml", "model: {arch: vit_small}\n"))
    assert cfg == ExperimentConfig(name="empty")
    assert cfg.train.epochs == TrainConfig.model_fields["epochs"].default
