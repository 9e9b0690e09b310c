"""Where the frozen pass runs: PyTorch, or on a CPU ONNX Runtime, in float32 or int8.

The frozen stages (BatchNorm folded, pooled where only the head learns) are exported once to ONNX and kept in the
cache folder under a digest of their weights; an int8 copy is quantized statically from the user's own training
photos (their centre crops). Each backend is an nn.Module whose printed form names it and its source weights, so
the features it computes are cached under keys of their own.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import time
from pathlib import Path

import torch
from torch import nn

from ..data.store import entry_key, temp_path, touch
from ..errors import UserError
from ..runtime import log
from .choice import choose_backend

CALIBRATION_PHOTOS = 64  # training photos whose activations set the int8 ranges
INT8_COSINE = 0.98  # int8 runs only where every calibration photo's features point the way float32's do, to this
FLOAT_CONVOLUTIONS = 5  # convolutions kept in float32 at each end of the int8 copy


def resolve_backend(name: str, device: torch.device) -> str:
    """auto: PyTorch on a GPU; on a CPU AUTO_ON_CPU where ONNX Runtime is installed, else PyTorch."""
    return choose_backend(name, device.type == "cpu", "on a GPU use --backend torch (or auto)")


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        return False
    return True


def on_backend(module: nn.Module, backend: str, crop: int, cache_dir: str | Path, calibration=None) -> nn.Module:
    """`module` (folded frozen stages) as it runs on `backend`; `calibration()` yields normalised float batches of
    training photos, for int8. Its `backend` attribute names what runs: int8 that fails its check runs float32."""
    if backend == "torch":
        module.backend = "torch"
        return module
    from .frozen import weights_digest

    folder = Path(cache_dir) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    source = weights_digest(module)
    path = folder / f"{entry_key(source, crop, torch.__version__)}.onnx"
    if not path.is_file():
        write_onnx(module, crop, path)
    if backend == "onnxruntime-int8":
        int8 = checked_int8(path, calibration)
        path, backend = (int8, backend) if int8 is not None else (path, "onnxruntime")
    touch(path)
    # the name is part of every key of the features it computes: the library's version, and int8's own copy (its
    # calibration photos and settings)
    copy = f", copy {path.stem}" if backend == "onnxruntime-int8" else ""
    return OnnxRuntimeModule(path, backend, f"{backend} of {source}{copy}, ONNX Runtime {onnxruntime_version()}")


def write_onnx(module: nn.Module, crop: int, path: Path) -> None:
    """The frozen stages as one ONNX file (`x` in, `features` out), with a dynamic batch size.

    Through torch.export, whose graph has the padding and shapes folded into constants: TorchScript's exporter is
    5x faster (3 s for Lite2), but its graph computes them at run time, and int8 quantized from it strayed further
    (cosine to float32's features 0.93 against 0.995 on Lite2).
    """
    started = time.perf_counter()
    with torch.no_grad():
        to_onnx(module.eval(), torch.zeros(2, 3, crop, crop), path, "x", ("features",))
    log(f"exported the frozen stages to ONNX in {time.perf_counter() - started:.1f} s")


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path, input_name: str,
            output_names: tuple[str, ...]) -> None:
    """The one ONNX export: through torch.export, a dynamic batch size, one self-contained file (written under a
    temporary name until complete); the exporter's notes silenced."""
    import warnings

    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UserError('ONNX export needs the onnx extra: pip install -e ".[onnx]"') from None
    batch, tmp = torch.export.Dim("batch", min=1, max=1024), temp_path(path)
    quiet = io.StringIO()  # the exporter's notes, steps and warnings say nothing a user can act on
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                        output_names=list(output_names), dynamic_shapes=({0: batch},), verbose=False)
            program.save(str(tmp), external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def has_vnni() -> bool:
    """Whether this CPU multiplies int8 with VNNI (AVX512-VNNI or AVX-VNNI); unknown counts as no."""
    try:
        return bool(re.search(r"\b(avx512_vnni|avx_vnni)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def int8_settings() -> dict:
    """How int8 is quantized on this CPU. Without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of products in
    int16, which saturates: on an AVX2 EPYC one photo's features fell to cosine 0.76 of float32's. 7-bit weights
    (reduce_range) keep each pair's sum in range, at some precision, which the float32 convolutions win back."""
    return {"reduce_range": not has_vnni(), "float_convolutions": FLOAT_CONVOLUTIONS}


def checked_int8(path: Path, calibration) -> Path | None:
    """The int8 copy of an ONNX file, if its features on the calibration photos point the way float32's do (cosine
    of at least INT8_COSINE on every photo); else None, after one line saying why. The copy and its cosines are
    kept side by side in the cache."""
    batches = calibration_arrays(calibration)
    settings = int8_settings()
    digest = entry_key(path.stem, *(entry_key(b.tobytes()) for b in batches), sorted(settings.items()),
                       onnxruntime_version())
    out, verdict_file = path.with_name(f"{digest}.int8.onnx"), path.with_name(f"{digest}.int8.json")
    if out.is_file() and verdict_file.is_file():
        verdict = json.loads(verdict_file.read_text())
    else:
        quantize(path, out, batches, settings)
        verdict = int8_verdict(path, out, batches)
        tmp = temp_path(verdict_file)  # whole or not at all: another process may read it
        tmp.write_text(json.dumps(verdict) + "\n")
        tmp.replace(verdict_file)
        if verdict["min_cosine"] >= INT8_COSINE:
            log(f"int8 checked: its features follow float32's to a cosine of {verdict['min_cosine']:.3f} or more on "
                f"the {verdict['photos']} calibration photos")
    touch(verdict_file)
    if verdict["min_cosine"] >= INT8_COSINE:
        return out
    log(f"int8 refused on this CPU: its features strayed from float32's (cosine {verdict['min_cosine']:.3f} on one "
        f"of {verdict['photos']} calibration photos, below {INT8_COSINE}); the frozen pass runs in float32 "
        "(--backend onnxruntime)")
    return None


def calibration_arrays(calibration) -> list:
    """The calibration photos as numpy batches of one size (the percentile calibrator stacks them)."""
    photos = torch.cat(list(calibration())).float().contiguous()
    size = min(8, len(photos))
    return [photos[i : i + size].numpy() for i in range(0, len(photos) - size + 1, size)]


def int8_verdict(float_path: Path, int8_path: Path, batches: list) -> dict:
    """How closely int8's features follow float32's on the calibration photos, and whether that is close enough."""
    runs = [OnnxRuntimeModule(p, "", "") for p in (float_path, int8_path)]
    cosines = torch.cat([nn.functional.cosine_similarity(*(run(torch.from_numpy(b)).flatten(1) for run in runs))
                         for b in batches])
    return {"min_cosine": cosines.min().item(), "mean_cosine": cosines.mean().item(), "photos": len(cosines)}


def quantize(path: Path, out: Path, batches: list, settings: dict) -> None:
    """The int8 copy of an ONNX file: QDQ, weights per channel, activation ranges from the calibration batches.

    Ranges at the 99.999th percentile rather than the extremes, and the first and last convolutions left in float32:
    on Lite2's features (64 Oxford photos calibrating, 48 others, on an AVX512-VNNI CPU) the cosine to float32's rose
    from 0.951 (min) / 0.993 (mean) to 0.979 / 0.995 (percentile) and 0.982 / 0.995 (one convolution each end); on an
    AVX2 EPYC with 7-bit weights, from 0.963 / 0.988 (one each end) to 0.985 / 0.993 (five).
    """
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
    ends = settings["float_convolutions"]
    try:
        quant_pre_process(str(path), str(prepared))
        convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator's progress notes
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=settings["reduce_range"], activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                            nodes_to_exclude=convs[:ends] + convs[-ends:])
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)
    bits = "7-bit weights" if settings["reduce_range"] else "8-bit weights"
    log(f"quantized the frozen stages to int8 ({bits}) on {sum(len(b) for b in batches)} training photos in "
        f"{time.perf_counter() - started:.1f} s")


SESSION_THREADS: int | None = None  # set by a teaching worker: its job's share of the cores (PyTorch runs on one)


@functools.lru_cache(maxsize=4)
def session(path: str, threads: int):
    """An ONNX Runtime session of the file on `threads` threads, loaded once per process (a warm worker's jobs reuse
    it: 0.5 s each); the file's name is a digest of what it holds."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about unused initializers say nothing to users
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class OnnxRuntimeModule(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, on SESSION_THREADS threads (None: PyTorch's thread count): float32
    in, float32 out."""

    def __init__(self, path: Path, backend: str, name: str):
        super().__init__()
        self.backend = backend
        threads = SESSION_THREADS or torch.get_num_threads()
        self.session = session(str(path), threads)
        # on one thread a photo at a time runs Lite2 15% faster than 8 (37.5 against 32.6 photos/s on an AVX2 EPYC,
        # two such processes at once: its caches hold one photo's activations); on more, batches of 8 keep each busy
        self.batch_size = 1 if threads == 1 else None
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"x": x.float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return self.name
