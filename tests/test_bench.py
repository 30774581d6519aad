"""`dinolab bench`: result files per machine and the markdown assembled from them; the step figure's
record on a tiny config (FLOPs counted, the replay holding the same FLOPs). Speed itself is never tested."""

import json

import pytest
import torch

from dinolab.bench.context import BenchContext
from dinolab.bench.markdown import assemble_markdown
from dinolab.bench.record import Record
from dinolab.bench.runner import FIGURE_NAMES, _figures, check_names, load_results, save_results
from dinolab.config import ConfigError

CPU = {"slug": "cpu-test-epyc", "cpu": "Test EPYC", "cpus": 2, "gpu": None, "gpus": 0, "cuda": None, "torch": "2.x", "python": "3.11"}
GPU = {"slug": "nvidia-test-h100", "cpu": "Test Xeon", "cpus": 16, "gpu": "NVIDIA Test H100", "gpus": 1, "cuda": "13.0",
       "torch": "2.x", "python": "3.11"}


def _record(name, value, machine, quick=False, date="2026-01-01T00:00:00+00:00"):
    return Record(name=name, title=f"{name} title", config={"batch": 64}, value=value, unit="s/step", baseline=value / 2,
                  baseline_desc="products alone", ratio=2.0, ratio_desc="step / products", target="ratio <= 1.25",
                  passed=False, repeats=5, spread={"min": value, "median": value, "max": value, "n": 5}, baseline_spread={},
                  peak_memory_mb=123.0, peak_memory_kind="RSS", extra={"flops_per_step": 10**9}, machine=machine,
                  date=date, command="dinolab bench", quick=quick, device="cuda" if machine["gpu"] else "cpu")


def test_cpu_run_keeps_the_cuda_section(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for machine, records in ((CPU, [_record("step_vit_tiny4", 11.5, CPU)]),
                             (GPU, [_record("step_vit_tiny4", 0.0421, GPU), _record("step_vit_small16_paper", 0.3125, GPU)])):
        payload = {"machine": machine, "updated": "2026-01-01", "records": {r.name: r.to_dict() for r in records}}
        (results / f"{machine['slug']}.json").write_text(json.dumps(payload))

    # A later CPU run: a new step figure, and a quick record that must not replace the full one.
    save_results(results, CPU, [_record("step_vit_tiny4", 9.75, CPU, date="2026-02-02T00:00:00+00:00"),
                                _record("report", 1.5, CPU)])
    save_results(results, CPU, [_record("step_vit_tiny4", 99.0, CPU, quick=True)])
    text = assemble_markdown(results)

    gpu = json.loads((results / "nvidia-test-h100.json").read_text())
    assert set(gpu["records"]) == {"step_vit_tiny4", "step_vit_small16_paper"}
    assert "## nvidia-test-h100: NVIDIA Test H100" in text
    assert "### step_vit_small16_paper (nvidia-test-h100)" in text and "0.3125" in text and "0.0421" in text
    cpu = load_results(results / "cpu-test-epyc.json")["records"]
    assert cpu["step_vit_tiny4"].value == 9.75 and not cpu["step_vit_tiny4"].quick
    assert set(cpu) == {"step_vit_tiny4", "report"}
    cpu_section = text[text.index("## cpu-test-epyc"):text.index("## nvidia-test-h100")]
    assert "9.75" in cpu_section and "11.5" not in cpu_section and "99" not in cpu_section
    assert "### report (cpu-test-epyc)" in cpu_section


def test_figure_names_and_validation():
    assert tuple(_figures()) == FIGURE_NAMES
    assert check_names(["report", "gemm_fp32"]) == ["gemm_fp32", "report"]
    with pytest.raises(ConfigError, match="valid: gemm_fp32"):
        check_names(["stepp"])


def test_cpu_attention_flops_closed_form():
    """The CPU flash-attention formulas: forward 2 products QK^T and PV (2 * 2*B*H*L*L*E), backward 5 of them."""
    from dinolab.bench.step import flop_counter

    b, h, length, e = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, length, e, requires_grad=True) for _ in range(3))
    with flop_counter() as fc:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    fwd = fc.get_total_flops()
    with flop_counter() as fc:
        out.sum().backward()
    bwd = fc.get_total_flops()
    one_product = 2 * b * h * length * length * e
    assert fwd == 2 * one_product
    assert bwd == 5 * one_product


def test_step_figure_quick_tiny_config(tmp_path):
    from dinolab.bench.step import measure_step

    ctx = BenchContext(workdir=tmp_path, quick=True, threads=1, device=torch.device("cpu"), command="dinolab bench --quick")
    tiny = {
        "model": {"arch": "vit_tiny", "patch_size": 4, "embed_dim": 32, "depths": [1], "num_heads": 2},
        "crops": {"global_size": 16, "local_size": 8, "local_number": 2},
        "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        "train": {"batch_size": 4},
    }
    rec = measure_step(ctx, "step_tiny", "tiny step", tiny, repeats=2)
    assert rec.name == "step_tiny" and rec.unit == "s/step" and rec.quick and rec.device == "cpu"
    assert rec.value > 0 and rec.baseline > 0 and rec.ratio == pytest.approx(rec.value / rec.baseline)
    assert rec.passed == (rec.ratio <= 1.25)
    assert rec.repeats == 2 and rec.spread["n"] == 2 and rec.spread["min"] <= rec.spread["median"] <= rec.spread["max"]
    assert rec.config["batch"] == 4 and rec.config["precision"] == "fp32" and rec.config["crops"] == "2x16 + 2x8"
    assert rec.peak_memory_mb is not None and rec.peak_memory_mb >= 0 and rec.peak_memory_kind
    assert rec.machine["slug"] and rec.torch == torch.__version__ and rec.date and rec.command == "dinolab bench --quick"
    flops = rec.extra["flops_per_step"]
    assert flops > 0
    assert rec.extra["flops_recorded"] == flops and rec.extra["flops_replayed"] == flops
    assert sum(op["flops"] for op in rec.extra["products"].values()) == flops
    assert {"mm", "addmm", "convolution"} <= set(rec.extra["products"])
    Record.from_dict(json.loads(json.dumps(rec.to_dict())))  # a result file round-trips
