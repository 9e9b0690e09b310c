"""Which engine runs the network, PyTorch or ONNX Runtime on a CPU, chosen once for training's frozen pass and for
`predict`: told without importing PyTorch (predict's ONNX path never loads it)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import UserError

BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
# What auto means on a CPU where ONNX Runtime is installed: float32, whose features equal PyTorch's (to 4e-6) at about
# twice its speed on a 2-core AVX512 CPU. int8 runs 5x PyTorch's speed there, but the default breed model it trained
# scored 91.4% on Oxford's test photos against 91.9% from PyTorch's features (species 99.8% both): more than the 0.3
# points allowed, so it is a choice (--backend onnxruntime-int8), not the default.
AUTO_ON_CPU = "onnxruntime"


def onnx_installed() -> bool:
    """ONNX Runtime to run the network, and the exporter (onnxscript) to write its copy: the onnx extra."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript"))


def gpu_present() -> bool:
    """An NVIDIA GPU this process may use, told without loading PyTorch (its driver lists it under /proc)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def choose_backend(name: str, on_cpu: bool, off_cpu_advice: str, allowed: tuple[str, ...] = BACKENDS) -> str:
    """auto: AUTO_ON_CPU on a CPU where ONNX Runtime is installed, else PyTorch; an ONNX Runtime backend asked for
    where it cannot run is one line saying so (`off_cpu_advice`: what to do instead off the CPU)."""
    if name not in allowed:
        raise UserError(f"unknown backend {name!r}; choose {', '.join(allowed)}")
    if name == "auto":
        return AUTO_ON_CPU if on_cpu and onnx_installed() else "torch"
    if name != "torch" and not on_cpu:
        raise UserError(f"--backend {name} runs on the CPU; {off_cpu_advice}")
    if name != "torch" and not onnx_installed():
        raise UserError(f'--backend {name} needs ONNX Runtime: pip install -e ".[onnx]" (or --backend torch)')
    return name
