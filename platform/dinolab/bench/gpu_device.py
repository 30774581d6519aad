"""The GPU check's first step: which device, driver and versions it runs on, and the device's dense bf16 peak.

``DENSE_BF16_TFLOPS`` is read against the step figure's counted FLOPs (model FLOP utilisation, MFU). The
values are NVIDIA's datasheet numbers for dense (no 2:4 sparsity) BF16 tensor-core throughput; the
datasheets print the sparse figure, twice the dense one, with an asterisk.
"""

from __future__ import annotations

import importlib
import platform as _platform
import shutil
import subprocess
from typing import Optional

import torch

# (substring of torch.cuda.get_device_name, dense bf16 TFLOP/s, source); the first match wins, so a variant
# comes before the plain name ("H200 NVL" before "H200"). The H100 SXM reports itself as "H100 80GB HBM3".
DENSE_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet, H200 NVL: 1,671 TFLOPS BF16 with sparsity"),
    ("H200", 989.0, "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOPS BF16 with sparsity"),
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOPS BF16 with sparsity"),
    ("H100 80GB HBM3", 989.0, "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOPS BF16 with sparsity"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS BF16 dense (624 with sparsity)"),
    ("L40S", 362.0, "NVIDIA L40S datasheet: 733 TFLOPS BF16 with sparsity"),
)

# Packages the check imports; pydantic and its core are the ones a bare GPU machine may lack
# (scripts/gpu_wheels.sh prepares them, scripts/gpu_check.sh installs them there).
PACKAGES = ("torch", "torchvision", "timm", "numpy", "PIL", "yaml", "pydantic", "pydantic_core", "psutil", "tqdm")
MIN_FREE_GIB = 20.0  # the check's largest step (ViT-S/16 paper crops, batch 64, bf16) and its replay fit well within


def dense_bf16_peak(device_name: str) -> Optional[tuple[float, str]]:
    """(TFLOP/s, source) of the device's dense bf16 peak, or None for a device not in the table."""
    for key, tflops, source in DENSE_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, source
    return None


def package_versions() -> dict[str, Optional[str]]:
    """{import name: version, or None when it does not import}."""
    out: dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            out[name] = str(getattr(module, "__version__", getattr(module, "VERSION", "?")))
        except Exception:  # noqa: BLE001 - a broken package reads as missing
            out[name] = None
    return out


def nvidia_smi() -> dict[str, str]:
    """Driver version and the board as nvidia-smi reports them ({} where nvidia-smi is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = ("driver_version", "name", "memory.total", "memory.used", "power.limit", "clocks.max.sm")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    values = [v.strip() for v in out.stdout.splitlines()[0].split(",")]
    return dict(zip(fields, values))


def device_report() -> dict:
    """Everything step 1 records: versions, packages, and the CUDA device when there is one."""
    info: dict = {
        "python": _platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": package_versions(),
        "cuda_available": torch.cuda.is_available(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
    }
    if not info["cuda_available"]:
        return info
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    name = torch.cuda.get_device_name(0)
    peak = dense_bf16_peak(name)
    info.update(
        device=name, device_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
        multiprocessors=props.multi_processor_count, total_gib=total / 2**30, free_gib=free / 2**30,
        bf16_supported=torch.cuda.is_bf16_supported(), nvidia_smi=nvidia_smi(),
        dense_bf16_tflops=peak[0] if peak else None, dense_bf16_source=peak[1] if peak else None,
    )
    return info
