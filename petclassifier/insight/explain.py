"""Why the network decided: Grad-CAM heat-maps, first-layer filters and feature maps from early to late stages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageError, centre_crop
from ..errors import UserError
from ..models.net import PetNet


class GradCAM:
    """Grad-CAM (Selvaraju et al. 2017) on one layer: channel weights = mean gradient of the class score.

    Hooks capture the layer's output on the forward pass and its gradient on the backward pass; the map is
    ReLU(sum_k weight_k * activation_k), i.e. where the evidence for the class lies.
    """

    def __init__(self, model: PetNet, layer: nn.Module | None = None):
        self.model = model.eval()
        self.layer = layer if layer is not None else model.body[-1]

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cams [B, h, w] scaled to 0-1 per photo, logits [B, num_classes]); classes default to the predicted."""
        saved = {}

        def keep(module, inputs, output):
            saved["activation"] = output
            output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

        handle = self.layer.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # the hook needs a graph even if every weight is frozen
                logits = self.model(x)
                if classes is None:
                    classes = logits.argmax(1)
                logits.gather(1, classes.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
        activation, gradient = saved["activation"].detach(), saved["gradient"].detach()
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation).sum(1))
        top = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
        return cam / top, logits.detach()


def upsample(cam: torch.Tensor, size: int) -> torch.Tensor:
    """A [h, w] (or [B, h, w]) cam resized bilinearly to size x size."""
    batched = cam if cam.dim() == 3 else cam[None]
    out = F.interpolate(batched[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return out if cam.dim() == 3 else out[0]


def heat_overlay(photo: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """A uint8 photo [3, H, W] under its 0-1 cam [H, W] in jet colours (blue cold, red hot): uint8 [3, H, W]."""
    x = cam.float().clamp(0, 1)[None]
    jet = torch.cat([(1.5 - (4 * x - k).abs()).clamp(0, 1) for k in (3, 2, 1)])  # red, green, blue rise in turn
    return ((1 - alpha) * photo.float() + alpha * 255 * jet).round().clamp(0, 255).to(torch.uint8)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@torch.inference_mode()
def stage_maps(model: PetNet, x: torch.Tensor, per_stage: int = 6) -> list[tuple[str, torch.Tensor]]:
    """The strongest feature maps of one photo [1, 3, H, W] at an early, a middle and the last body stage."""
    picks = sorted({1 if len(model.body) > 2 else 0, len(model.body) // 2, len(model.body) - 1})
    out, h = [], x
    for i, stage in enumerate(model.body):
        h = stage(h)
        if i in picks:
            maps = h[0].float()
            strongest = maps.mean((1, 2)).argsort(descending=True)[:per_stage]
            chosen = maps[strongest]
            low = chosen.amin((1, 2), keepdim=True)
            span = (chosen.amax((1, 2), keepdim=True) - low).clamp(min=1e-8)
            label = {picks[0]: "early", picks[-1]: "late"}.get(i, "middle")
            out.append((f"{label}: stage {i} ({maps.shape[0]} maps)", ((chosen - low) / span).cpu()))
    return out


def explain_photos(classifier, paths: list[str | Path], out: str | Path, classes: list[str] = ()) -> list[Path]:
    """Grad-CAM pictures per photo (predicted class and each asked class), filters and feature maps."""
    from .plots import plot_feature_maps, plot_filters, plot_gradcam

    names = classifier.class_names
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise UserError(f"unknown class {unknown[0]!r}; the checkpoint knows: {', '.join(names)}")
    model, prep, out = classifier.model.float(), classifier.preprocessing, Path(out)
    model = model.to(memory_format=torch.contiguous_format)
    written = []
    conv = first_conv(model)
    written.append(plot_filters(conv.weight.cpu(), out / "filters.png",
                                f"First-layer filters: {conv.weight.shape[0]} learned {conv.kernel_size[0]}x"
                                f"{conv.kernel_size[1]} colour detectors (edges, colour blobs)"))
    gradcam = GradCAM(model)
    for path, stem in zip(paths, output_names(paths)):
        try:
            image = classifier._load(path)
        except ImageError as e:
            raise UserError(f"cannot explain {path}: {e}") from None
        square = prep.square(image)
        x = prep.eval_batch(square[None].to(classifier.device)).contiguous()
        photo = centre_crop(square, prep.crop)
        probs = classifier.probabilities([image])[0]  # as predict reports them: temperature, flip TTA
        predicted = int(probs.argmax())
        cams, _ = gradcam(x, torch.tensor([predicted], device=x.device))
        panels = [(f"predicted: {names[predicted]} {probs[predicted]:.0%}", upsample(cams[0], prep.crop).cpu())]
        for name in classes:
            k = names.index(name)
            cam_k, _ = gradcam(x, torch.tensor([k], device=x.device))
            panels.append((f"evidence for {name} ({probs[k]:.0%})", upsample(cam_k[0], prep.crop).cpu()))
        written.append(plot_gradcam(photo, panels, out / f"{stem}_gradcam.png",
                                    f"Grad-CAM: where the network looked ({Path(path).name})"))
        written.append(plot_feature_maps(photo, stage_maps(model, x), out / f"{stem}_features.png",
                                         "Feature maps: edges and colours early, parts of the pet late"))
    return written


def output_names(paths: list[str | Path]) -> list[str]:
    """A name per photo for its pictures, so that none overwrite another's: its stem, made unique where needed."""
    # photos that share a stem (IMG_0001.jpg from two cameras) get their folder's name before it, then a number
    stems = [Path(p).stem for p in paths]
    shared = Counter(stems)
    wanted = [f"{Path(p).resolve().parent.name}_{s}" if shared[s] > 1 else s for p, s in zip(paths, stems)]
    taken, seen, names = set(wanted), set(), []
    for name in wanted:
        unique = name
        if name in seen:  # the same folder name too: number the later ones
            unique = next(f"{name}_{k}" for k in range(2, len(wanted) + 2) if f"{name}_{k}" not in taken)
            taken.add(unique)
        seen.add(name)
        names.append(unique)
    return names
