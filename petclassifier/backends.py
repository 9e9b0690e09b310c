"""Where the frozen pass runs: PyTorch, or on a CPU ONNX Runtime, in float32 or int8.

The frozen stages (BatchNorm folded, pooled where only the head learns) are exported once to ONNX and kept in the
cache folder under a digest of their weights; an int8 copy is quantized statically from the user's own training
photos (their centre crops). Each backend is an nn.Module whose printed form names it and its source weights, so
the features it computes are cached under keys of their own.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .runtime import log
from .store import entry_key, temp_path, touch

BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
CALIBRATION_PHOTOS = 64  # training photos whose activations set the int8 ranges
CALIBRATION_SEED = 0


# What auto means on a CPU where ONNX Runtime is installed: float32, whose features equal PyTorch's (to 4e-6) at about
# twice its speed on a 2-core AVX512 CPU. int8 runs 5x PyTorch's speed there, but the default breed model it trained
# scored 91.4% on Oxford's test photos against 91.9% from PyTorch's features (species 99.8% both): more than the 0.3
# points allowed, so it is a choice (--backend onnxruntime-int8), not the default.
AUTO_ON_CPU = "onnxruntime"


def resolve_backend(name: str, device: torch.device) -> str:
    """auto: PyTorch on a GPU; on a CPU AUTO_ON_CPU where ONNX Runtime is installed, else PyTorch."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose {', '.join(BACKENDS)}")
    if name == "auto":
        return AUTO_ON_CPU if device.type == "cpu" and onnx_available() else "torch"
    if name != "torch" and device.type != "cpu":
        raise UserError(f"--backend {name} runs on the CPU; on a GPU use --backend torch (or auto)")
    if name != "torch" and not onnx_available():
        raise UserError(f'--backend {name} needs ONNX Runtime: pip install -e ".[onnx]" (or --backend torch)')
    return name


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        return False
    return True


def on_backend(module: nn.Module, backend: str, crop: int, cache_dir: str | Path, calibration=None) -> nn.Module:
    """`module` (folded frozen stages) as it runs on `backend`; `calibration()` yields normalised float batches of
    training photos, for int8."""
    if backend == "torch":
        return module
    from .frozen import weights_digest

    folder = Path(cache_dir) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    source = weights_digest(module)
    path = folder / f"{entry_key(source, crop, torch.__version__)}.onnx"
    if not path.is_file():
        write_onnx(module, crop, path)
    if backend == "onnxruntime-int8":
        path = quantized(path, calibration)
    touch(path)
    return OnnxRuntimeModule(path, f"{backend} of {source}")


def write_onnx(module: nn.Module, crop: int, path: Path) -> None:
    """The module as one ONNX file with a dynamic batch size (written under a temporary name until complete).

    Through torch.export, whose graph has the padding and shapes folded into constants: TorchScript's exporter is
    5x faster (3 s for Lite2), but its graph computes them at run time, and int8 quantized from it strayed further
    (cosine to float32's features 0.93 against 0.995 on Lite2).
    """
    import warnings

    started, tmp = time.perf_counter(), temp_path(path)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's notes and steps say nothing a user can act on
            program = torch.onnx.export(module.eval(), (torch.zeros(2, 3, crop, crop),), dynamo=True,
                                        input_names=["x"], output_names=["features"], dynamic_shapes=({0: batch},),
                                        verbose=False)
            program.save(str(tmp), external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"exported the frozen stages to ONNX in {time.perf_counter() - started:.1f} s")


def quantized(path: Path, calibration) -> Path:
    """The int8 copy of an ONNX file: QDQ, weights per channel, activation ranges from the calibration batches.

    Ranges at the 99.999th percentile rather than the extremes, and the first and last convolutions left in float32:
    on Lite2's features (64 Oxford photos calibrating, 48 others) the cosine to float32's rose from 0.951 (min) /
    0.993 (mean) to 0.979 / 0.995 (percentile) and 0.982 / 0.995 (the two convolutions).
    """
    photos = torch.cat(list(calibration())).float().contiguous()
    size = min(8, len(photos))  # batches of one size: the percentile calibrator stacks them
    batches = [photos[i : i + size].numpy() for i in range(0, len(photos) - size + 1, size)]
    digest = entry_key(path.stem, *(entry_key(b.tobytes()) for b in batches))
    out = path.with_name(f"{digest}.int8.onnx")
    if out.is_file():
        return out
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            x = next(self.left, None)
            return None if x is None else {"x": x}

    started, prepared, tmp = time.perf_counter(), temp_path(path.with_suffix(".pre.onnx")), temp_path(out)
    try:
        quant_pre_process(str(path), str(prepared))
        convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=convs[:1] + convs[-1:])
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)
    log(f"quantized the frozen stages to int8 on {sum(len(b) for b in batches)} training photos in "
        f"{time.perf_counter() - started:.1f} s")
    return out


class OnnxRuntimeModule(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, with PyTorch's thread count: float32 in, float32 out."""

    def __init__(self, path: Path, name: str):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings about unused initializers say nothing to users
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"x": x.float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return self.name
