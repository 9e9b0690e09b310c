"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on the validation split, makes softmax(logits / T)
calibrated probabilities: of the photos given 80%, about 80% right. T changes no argmax, so no accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# A validation split the model gets entirely right pushes T towards 0 (certainty) without end; kept in bounds.
BOUNDS = (0.05, 20.0)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """T minimising the NLL of softmax(logits / T), by LBFGS on log T (T stays positive), with the NLL before/after."""
    z, y = logits.detach().cpu().to(torch.float64, copy=True), labels.detach().cpu().clone()
    with torch.inference_mode(False), torch.enable_grad():  # the logits may come from an inference-mode pass
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
    temperature = min(max(math.exp(log_t.item()), BOUNDS[0]), BOUNDS[1])
    before, after = nll(z, y), nll(z, y, temperature)
    if not after < before:  # a failed or pointless fit keeps the model's own probabilities
        temperature, after = 1.0, before
    return {"temperature": temperature, "nll_before": before, "nll_after": after}


def describe(fit: dict) -> str:
    """'calibration: temperature 0.71 (validation NLL 0.412 -> 0.365)'."""
    at_bound = fit["temperature"] == BOUNDS[0]
    bound = "; at its lower bound: the validation photos are (nearly) all right, too easy to calibrate on" * at_bound
    return (f"calibration: temperature {fit['temperature']:.3g} (validation NLL {fit['nll_before']:.3f} -> "
            f"{fit['nll_after']:.3f}{bound})")
