"""Trial identity = the resolved network and recipe: every spelling of one network is one trial id (ViT, Swin,
ResNet, generic timm), knobs the family or objective does not use are not part of it, and a knob added to the
schema at its default leaves every id unchanged."""

from __future__ import annotations

import pytest
from pydantic import Field

from dinolab.config import ConfigError, ExperimentConfig, build_config, config_to_dict, resolved_identity, trial_id
from dinolab.config.schema import DinoConfig, ModelConfig

FP = "fingerprint"


def tid(model: dict, **sections) -> str:
    return trial_id(build_config({"model": model, **sections}), FP)


SPELLINGS = {
    "vit": [
        {"arch": "vit_small"},
        {"arch": "vit_small", "patch_size": 16},
        {"arch": "deit_small"},  # DINO's ViT-S is DeiT-S: the same network
        {"arch": "vit_small", "embed_dim": 384, "depths": [12], "num_heads": 6},
        {"arch": "vit_tiny", "embed_dim": 384, "num_heads": 6},  # ViT-Ti widened to ViT-S
    ],
    "swin": [
        {"arch": "swin_tiny"},
        {"arch": "swin_tiny", "patch_size": 4, "window_size": 7, "embed_dim": 96, "depths": [2, 2, 6, 2],
         "num_heads": [3, 6, 12, 24]},
        {"arch": "swin_small", "depths": [2, 2, 6, 2]},  # Swin-S is Swin-T with 18 blocks in stage 3
    ],
    "resnet": [
        {"arch": "resnet18"},
        {"arch": "resnet18", "small_stem": False},
        {"arch": "resnet18", "depths": [2, 2, 2, 2], "embed_dim": 64},
    ],
    "timm": [
        {"arch": "convnext_atto"},
        {"arch": "convnext_atto", "depths": [2, 2, 6, 2]},  # its own depths
    ],
}
OTHER_NETWORK = {
    "vit": {"arch": "vit_small", "patch_size": 8},
    "swin": {"arch": "swin_tiny", "window_size": 14},
    "resnet": {"arch": "resnet18", "small_stem": True},
    "timm": {"arch": "convnext_atto", "depths": [2, 2, 2, 2]},
}


@pytest.mark.parametrize("family", sorted(SPELLINGS))
def test_every_spelling_of_one_network_is_one_trial(family):
    ids = {tid(model) for model in SPELLINGS[family]}
    assert len(ids) == 1, family
    assert tid(OTHER_NETWORK[family]) not in ids
    assert resolved_identity(build_config({"model": SPELLINGS[family][0]}))["model"]["family"] == family


def test_the_resolved_values_are_the_built_network():
    from dinolab.models.registry import build_backbone

    cfg = build_config({"model": {"arch": "vit_small", "embed_dim": 32, "depths": [1], "num_heads": 2},
                        "crops": {"global_size": 32, "local_size": 16}})
    model = resolved_identity(cfg)["model"]
    vit = build_backbone(cfg.model, 32, 0.0)
    assert model == {"family": "vit", "patch_size": vit.patch_size, "embed_dim": vit.embed_dim,
                     "depth": len(vit.model.blocks), "num_heads": vit.num_heads, "drop_path_rate": 0.1}
    assert model["patch_size"] == 16  # the default, resolved in the family's spec


def test_a_two_row_grid_of_one_network_is_refused_as_one_trial(tmp_path):
    from dinolab.config import expand_grid

    (tmp_path / "base.yaml").write_text("model: {arch: vit_small}\n")
    path = tmp_path / "g.yaml"
    path.write_text("grid: g\nbase: base.yaml\nrows:\n  - {name: p16, set: {model.patch_size: 16}}\n  - {name: pnull, set: {model.patch_size: null}}\n")
    with pytest.raises(ConfigError, match="same trial"):
        expand_grid(path)


@pytest.mark.parametrize(
    "model, needle",
    [
        ({"arch": "resnet50", "patch_size": 16}, "model.patch_size=16 does not apply to model.arch=resnet50"),
        ({"arch": "resnet18", "window_size": 7}, "model.window_size=7 does not apply"),
        ({"arch": "convnext_atto", "patch_size": 4}, "model.patch_size=4 does not apply to model.arch=convnext_atto"),
        ({"arch": "vit_small", "small_stem": True}, "takes model.patch_size, model.embed_dim, model.depths, model.num_heads"),
        ({"arch": "swin_tiny", "small_stem": False}, "model.small_stem=False does not apply"),
        ({"arch": "vit_small", "num_heads": 0}, "model.num_heads=0 must be >= 1 and divide model.embed_dim=384"),
        ({"arch": "swin_tiny", "num_heads": [3, 6, 12, 0]}, "model.num_heads[3]=0 must be >= 1 and divide stage 3's width 768"),
    ],
)
def test_a_knob_the_family_does_not_use_is_refused_in_one_line(model, needle):
    with pytest.raises(ConfigError) as err:
        build_config({"model": model})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_knobs_the_objective_does_not_use_are_not_part_of_the_id():
    base = {"arch": "vit_small"}
    ce = tid(base)
    assert tid(base, dino={"infonce_temp": 0.5}) == ce  # InfoNCE's temperature: only with dino.loss=infonce
    assert tid(base, dino={"sinkhorn_iterations": 7}) == ce  # only with sinkhorn centering
    assert tid(base, dino={"warmup_teacher_temp": 0.01}) == ce  # no warm-up epochs: never used
    assert tid(base, dino={"warmup_teacher_temp": 0.01, "warmup_teacher_temp_epochs": 2}) != tid(base, dino={"warmup_teacher_temp_epochs": 2})
    infonce = {"loss": "infonce", "centering": "none"}
    assert tid(base, dino={**infonce, "infonce_temp": 0.5}) != tid(base, dino=infonce)
    assert tid(base, dino={**infonce, "student_temp": 0.2}) == tid(base, dino=infonce)
    sink = {"centering": "sinkhorn"}
    assert tid(base, dino={**sink, "sinkhorn_iterations": 7}) != tid(base, dino=sink)
    assert tid(base, dino={**sink, "center_momentum": 0.5}) == tid(base, dino=sink)
    prev = {"teacher": "prev_epoch"}
    assert tid(base, dino={**prev, "momentum": 0.9}) == tid(base, dino=prev)  # momentum: the ema teacher's only
    assert tid(base, dino={"momentum": 0.9}) != ce
    resnet = {"arch": "resnet18"}
    assert tid({**resnet, "drop_path_rate": 0.0}) == tid(resnet)  # DINO's ResNets have no stochastic depth
    assert tid({**base, "drop_path_rate": 0.0}) != ce
    no_locals = {"local_number": 0}
    assert tid(base, crops={**no_locals, "local_size": 32}) == tid(base, crops=no_locals)
    assert tid(base, eval={"image_size": 224}) == ce  # the default evaluation size, spelled out
    assert tid(base, eval={"linear": False, "linear_epochs": 3}) == tid(base, eval={"linear": False})


def test_a_knob_added_at_its_default_leaves_ids_unchanged():
    class NewDino(DinoConfig):
        new_knob: float = Field(0.5, description="a knob added after these ids were made")

    class NewModel(ModelConfig):
        new_structure: int = Field(3)

    class NewSchema(ExperimentConfig):
        dino: NewDino = NewDino()
        model: NewModel = NewModel()
        new_section_knob: bool = False

    for cfg in (build_config({}), build_config({"model": {"arch": "resnet18"}, "dino": {"loss": "mse", "centering": "none"}})):
        same = NewSchema.model_validate(config_to_dict(cfg))
        assert trial_id(same, FP) == trial_id(cfg, FP)
        assert trial_id(NewSchema.model_validate({**config_to_dict(cfg), "dino": {**config_to_dict(cfg)["dino"], "new_knob": 0.7}}), FP) != trial_id(cfg, FP)
        assert trial_id(NewSchema.model_validate({**config_to_dict(cfg), "new_section_knob": True}), FP) != trial_id(cfg, FP)
