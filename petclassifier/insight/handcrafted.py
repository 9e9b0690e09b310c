"""Classic hand-crafted image features in torch ops (colour histogram, HOG, LBP) and a linear classifier on them.

This is how image classification was done before deep learning: an expert decides what to measure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOUR_BINS = 8  # per channel: a joint RGB histogram of 8 x 8 x 8 bins
HOG_CELL = 8  # pixels per HOG cell side
HOG_ORIENTATIONS = 9  # unsigned gradient orientation bins over 0-180 degrees
FEATURE_SIZE = 64  # side the photos are resized to before HOG and LBP (8x8 cells of 8 px)


def colour_histogram(images: torch.Tensor, bins: int = COLOUR_BINS) -> torch.Tensor:
    """Joint RGB histogram of uint8 images [B, 3, H, W] -> [B, bins**3], each row summing to 1."""
    q = (images.long() * bins) // 256  # [B, 3, H, W] bin per channel
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    counts = torch.zeros(images.shape[0], bins**3).scatter_add_(1, index.flatten(1), torch.ones(index.flatten(1).shape))
    return counts / counts.sum(1, keepdim=True)


def grey(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> luminance in 0-1 [B, 1, H, W]."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() / 255 * weights).sum(1, keepdim=True)


def hog(images: torch.Tensor, cell: int = HOG_CELL, orientations: int = HOG_ORIENTATIONS) -> torch.Tensor:
    """Histograms of oriented gradients (Dalal & Triggs 2005): per cell, gradient magnitude binned by orientation,
    L2-normalised over overlapping 2x2-cell blocks. uint8 [B, 3, H, W] -> [B, blocks * 4 * orientations]."""
    g = grey(images)
    kx = torch.tensor([[-1.0, 0.0, 1.0]]).view(1, 1, 1, 3)
    gx = F.conv2d(F.pad(g, (1, 1, 0, 0), mode="replicate"), kx)
    gy = F.conv2d(F.pad(g, (0, 0, 1, 1), mode="replicate"), kx.transpose(2, 3))
    magnitude = (gx**2 + gy**2).sqrt()
    angle = torch.atan2(gy, gx) % torch.pi  # unsigned: a light-to-dark edge equals a dark-to-light one
    bin_index = (angle / torch.pi * orientations).long().clamp(max=orientations - 1)
    votes = torch.zeros(g.shape[0], orientations, *g.shape[2:]).scatter_(1, bin_index, magnitude)
    cells = F.avg_pool2d(votes, cell) * cell * cell  # [B, orientations, H/cell, W/cell] summed magnitudes
    blocks = cells.unfold(2, 2, 1).unfold(3, 2, 1)  # [B, O, by, bx, 2, 2]
    blocks = blocks.permute(0, 2, 3, 1, 4, 5).flatten(3)  # [B, by, bx, O*4]
    blocks = blocks / (blocks.norm(dim=3, keepdim=True) + 1e-6)
    blocks = blocks.clamp(max=0.2)  # "L2-Hys": clip, then renormalise
    blocks = blocks / (blocks.norm(dim=3, keepdim=True) + 1e-6)
    return blocks.flatten(1)


def lbp_histogram(images: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Local binary patterns (Ojala et al. 2002), a texture descriptor: each pixel's 8 neighbours compared with it
    give a code 0-255; one 256-bin histogram per cell of a grid x grid layout. -> [B, grid*grid*256]."""
    g = grey(images)
    b, _, h, w = g.shape
    padded = F.pad(g, (1, 1, 1, 1), mode="replicate")
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    code = torch.zeros(b, h, w, dtype=torch.long)
    for bit, (dy, dx) in enumerate(offsets):
        neighbour = padded[:, 0, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        code |= (neighbour >= g[:, 0]).long() << bit
    hists = []
    for rows in code.chunk(grid, dim=1):
        for part in rows.chunk(grid, dim=2):
            flat = part.flatten(1)
            counts = torch.zeros(b, 256).scatter_add_(1, flat, torch.ones(flat.shape))
            hists.append(counts / flat.shape[1])
    return torch.cat(hists, 1)


def handcrafted_features(images: torch.Tensor, size: int = FEATURE_SIZE, batch_size: int = 128) -> torch.Tensor:
    """Colour histogram, HOG and LBP of uint8 photos [N, 3, R, R] resized to size x size: [N, D] floats."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
        # the square roots (Hellinger maps) make histogram distances behave well for a linear classifier
        out.append(torch.cat([colour_histogram(x).sqrt(), hog(x), lbp_histogram(x).sqrt()], 1))
    return torch.cat(out)


class LinearClassifier:
    """Multinomial logistic regression on standardised features, L2 strength chosen on a validation split."""

    def __init__(self, strengths: tuple[float, ...] = (1e-3, 1e-2), steps: int = 100):
        self.strengths, self.steps = strengths, steps

    def _train(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float) -> torch.nn.Linear:
        torch.manual_seed(0)
        linear = torch.nn.Linear(x.shape[1], num_classes)
        optimizer = torch.optim.Adam(linear.parameters(), lr=0.01)  # full batch: the data are a few MB
        for _ in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(linear(x), y) + strength * linear.weight.pow(2).sum()
            loss.backward()
            optimizer.step()
        return linear

    def fit(self, x, y, x_val, y_val, num_classes: int, refit: bool = True) -> LinearClassifier:
        """Choose the L2 strength on the validation photos; with `refit`, the final model learns from them too
        (only when another split remains to score it on)."""
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        xs, vs = (x - self.mean) / self.std, (x_val - self.mean) / self.std
        best = None
        for strength in self.strengths:
            linear = self._train(xs, y, num_classes, strength)
            with torch.no_grad():
                accuracy = (linear(vs).argmax(1) == y_val).float().mean().item()
            if best is None or accuracy > best[0]:
                best = (accuracy, strength, linear)
        _, self.strength, self.linear = best
        if refit:  # the final model: train + validation photos, the chosen strength
            self.linear = self._train(torch.cat([xs, vs]), torch.cat([y, y_val]), num_classes, self.strength)
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)
