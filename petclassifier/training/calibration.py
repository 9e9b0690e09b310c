"""Temperature scaling (Guo et al., 2017): one scalar T makes softmax(logits / T) calibrated probabilities: of the
photos given 80%, about 80% right. T changes no argmax, so no accuracy.

T is fitted on scores of photos the scored model never learned from, with a weak prior on log T around 0 (T = 1):
it costs (log T)^2 / 2 nats in all, against the NLL summed over every photo. Hundreds of photos outweigh it; a
handful that the model gets all right, which would drive T towards 0 (certainty) without end, do not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PRIOR_SD = 1.0  # of log T: T within [0.37, 2.7] a priori, a factor e either way
BOUNDS = (1e-3, 1e3)  # past these the fit has failed (the prior holds T well inside): T = 1 is kept
FEW_WRONG = 5  # with fewer mistakes than this among the scored photos, T comes mostly from its prior


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, source: str = "validation") -> dict:
    """T maximising the posterior of softmax(logits / T) (NLL plus the prior), by LBFGS on log T; with the NLL
    before and after, how many photos it was fitted on and how many of them the model got wrong."""
    z, y = logits.detach().cpu().to(torch.float64, copy=True), labels.detach().cpu().clone()
    with torch.inference_mode(False), torch.enable_grad():  # the logits may come from an inference-mode pass
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y, reduction="sum") + log_t.square().sum() / (2 * PRIOR_SD**2)
            loss.backward()
            return loss

        optimizer.step(closure)
    temperature = math.exp(log_t.item())
    fit = {"temperature": temperature, "photos": len(y), "wrong": int((z.argmax(1) != y).sum()), "source": source}
    if not (BOUNDS[0] < temperature < BOUNDS[1]) or not math.isfinite(temperature):
        fit.update(temperature=1.0, failed=True)  # never a bound value: the model's own probabilities
    fit.update(nll_before=nll(z, y), nll_after=nll(z, y, fit["temperature"]))
    return fit


def describe(fit: dict) -> str:
    """'calibration: temperature 0.71 on 1,000 cross-fitted photos (NLL 0.412 -> 0.365)', with any caveat."""
    line = (f"calibration: temperature {fit['temperature']:.3g} on {fit.get('photos', 0):,} {fit.get('source', '')} "
            f"photos (NLL {fit['nll_before']:.3f} -> {fit['nll_after']:.3f})")
    if fit.get("failed"):
        return line + "; the fit failed, so the model's own probabilities are kept (T = 1)"
    if fit.get("wrong", FEW_WRONG) < FEW_WRONG:
        return (line + f"; only {fit['wrong']} of them wrong: too few mistakes to measure confidence on, so T "
                f"{fit['temperature']:.3g} is where these photos and the prior that holds T near 1 balance, not a "
                "measurement; more photos calibrate it better")
    return line
