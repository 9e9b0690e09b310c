"""Phase 3 of a run: the model to keep and its temperature, then the test score, once."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..data.cache import decode_split
from ..data.store import FeatureStore
from ..engine.frozen import Views
from ..engine.metrics import confusion_matrix, expected_calibration_error, mean_class_accuracy
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..runtime import log
from . import calibration
from .epochs import warn_if_at_chance
from .prepare import Prepared
from .refit import cross_fitted_logits, refit


def finish(p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path, best_accuracy: float,
           features: FeatureStore) -> dict:
    """Phase 3: the model to keep and its temperature, fitted for that model on photos it never learned from; then
    the test score, once.

    A head on pooled features (refit, the default): the kept head is trained again on train + val photos for the
    run's epochs, and its temperature comes from cross-fitting (every photo scored by a head trained the same way
    without it). Otherwise (--no-refit, or layers of the body learn): the best epoch's weights, and a temperature
    fitted on the validation photos that model never learned from.
    """
    cfg = p.cfg
    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "best_val_accuracy": best_accuracy,
               "photos": {"train": len(p.train_labels), "val": len(p.val_labels)}}
    # rank 0 wrote best.pt on its machine's disk; the other machines may not see the run folder
    best = distributed.from_main(lambda: load_checkpoint(run_dir / "best.pt"))
    refitting = cfg.refit and p.pooled
    if refitting:
        fitted, cross_fitted = refit_pooled_head(p, trained, train_criterion, cfg, device)
        summary.update(cross_fitted)
        best.update(model_state=p.model.state_dict(), refit=True)
    else:
        best.pop("refit", None)
        p.model.load_state_dict(best["model_state"])
        fitted = calibration.fit_temperature(*p.scored(p.val_images, p.val_views, p.val_labels, criterion, device))
    fitted = distributed.gather(fitted)[0]  # rank 0's T goes to every rank, so all agree to the last bit
    log(calibration.describe(fitted))
    summary["calibration"], summary["refit"] = fitted, refitting
    best["temperature"] = fitted["temperature"]
    if distributed.is_main():  # atomic again: a crash leaves best.pt as it was, without a temperature
        save_checkpoint(best, run_dir / "best.pt")
    warn_if_at_chance(p, best_accuracy, "at the end")
    if p.data.test is not None:
        scores = test_scores(p, criterion, device, fitted["temperature"], features)
        summary["photos"]["test"] = scores.pop("photos")
        summary.update(scores)
    summary["skipped"] = [{"path": path, "reason": reason} for path, reason in p.skipped]
    if p.skipped:
        log(f"warning: {len(p.skipped)} unreadable photo(s) were skipped (listed above); --strict-images stops "
            "at the first instead")
    summary["best_epoch"] = best["metrics"]["epoch"] if best.get("metrics") else None
    return summary


def refit_pooled_head(p: Prepared, trained: nn.Module, train_criterion, cfg: TrainConfig, device) -> tuple:
    """The head trained again from its initial weights on every train and val photo, as each cross-fitted head was
    on 4/5 of them; returns the temperature fitted on the cross-fitted scores, and their accuracy and confusions."""
    labels, inputs_of = torch.cat([p.train_labels, p.val_labels.to(p.train_labels.device)]), p.joined_inputs
    scored_views = [inputs_of(v) for v in ((0, 1) if cfg.flip_tta else (0,))]
    logits, scored = cross_fitted_logits(p.trainable, trained, p.initial_head, inputs_of, scored_views, labels,
                                         train_criterion, cfg, device)  # scored: labels in the folds' order
    predicted = logits.argmax(1)
    p.trainable.load_state_dict(p.initial_head)
    refit(trained, inputs_of, labels, train_criterion, cfg, device)  # 10% more photos: +1.2 points on the breeds
    # every photo scored by a head that never learned from it: what the kept head does on new photos
    return calibration.fit_temperature(logits, scored, source="cross-fitted"), {
        "cross_fitted_accuracy": (predicted == scored).float().mean().item(),
        "cross_fitted_confusion": confusion_matrix(scored.cpu(), predicted.cpu(), len(p.data.class_names)).tolist()}


def test_scores(p: Prepared, criterion, device, temperature: float, features: FeatureStore) -> dict:
    """Accuracy, mean per-class accuracy and calibration error of the kept model on the test photos."""
    cfg = p.cfg
    images, labels = decode_split(p.data.test, p.prep, cfg, p.skipped)
    views = Views(p.frozen_fast, images, p.prep, "test", 1, cfg.flip_tta, cfg.seed, device, features,
                  images.path.stem, p.rows_of) if p.frozen_fast is not None else None
    logits, labels = p.scored(images, views, labels, criterion, device)
    ece = expected_calibration_error((logits.double() / temperature).softmax(1), labels)
    return {"photos": len(labels), "test_accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "test_mean_class_accuracy": mean_class_accuracy(logits, labels), "test_ece": ece}
