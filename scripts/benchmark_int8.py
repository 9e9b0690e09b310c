#!/usr/bin/env python
"""The frozen pass on each CPU backend: images per second, and how far int8's features stray from PyTorch's.

    python scripts/benchmark_int8.py --data-dir ../shared/data --json int8.json

Lite2's frozen stages (BatchNorm folded, pooled) at 260 px in the engine's batches, on the centre crops of Oxford
photos: int8 is quantized from 64 trainval photos (as a training run does, its check included) and compared on 96
test photos it never saw. Speeds are the median of 5 passes over those 96 photos, after one unmeasured pass.
"""

import argparse
import json
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name and whether it has VNNI, as a speed figure must say."""
    from petclassifier.engine.backends import has_vnni

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = re.search(r"model name\s*:\s*(.+)", text)
    return f"{name[1].strip() if name else platform.processor()}, VNNI {'yes' if has_vnni() else 'no'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the folder holding oxford-iiit-pet/")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    from petclassifier.data.images import load_image
    from petclassifier.data.transforms import Preprocessing
    from petclassifier.engine.backends import INT8_COSINE, int8_settings, on_backend
    from petclassifier.engine.frozen import fast_frozen
    from petclassifier.models.registry import build_model
    from petclassifier.runtime import inference_batch_size

    root = Path(args.data_dir) / "oxford-iiit-pet"
    if not (root / "annotations" / "test.txt").is_file():
        sys.exit(f"error: no Oxford-IIIT Pet annotations under {root}")
    ids = {split: [line.split()[0] for line in (root / "annotations" / f"{split}.txt").read_text().splitlines()
                   if line.strip()] for split in ("trainval", "test")}
    for split, seed in (("trainval", 0), ("test", 1)):
        random.Random(seed).shuffle(ids[split])
    prep = Preprocessing.for_model("efficientnet_lite2", 260)

    def crops(names):
        squares = [prep.square(load_image(root / "images" / f"{n}.jpg", min_size=prep.resize)) for n in names]
        return prep.eval_batch(torch.stack(squares))

    calibration, photos = crops(ids["trainval"][:64]), crops(ids["test"][:96])
    model = build_model("efficientnet_lite2", 2, pretrained=True, imagenet_stages=0).eval()
    frozen, _ = model.split(0)
    body, batch = fast_frozen(frozen, model.head[0]), inference_batch_size(torch.device("cpu"))
    cache = tempfile.mkdtemp(prefix="int8-")
    with torch.inference_mode():
        expected = body(photos).flatten(1)
        rows = {}
        for backend in ("torch", "onnxruntime", "onnxruntime-int8"):
            engine = on_backend(body, backend, prep.crop, cache, lambda: iter(calibration.split(8)))
            features = torch.cat([engine(x) for x in photos.split(batch)]).flatten(1)  # also the warm-up pass
            seconds = []
            for _ in range(5):
                started = time.perf_counter()
                for x in photos.split(batch):
                    engine(x)
                seconds.append(time.perf_counter() - started)
            cosine = F.cosine_similarity(features, expected)
            rows[backend] = {"ran": engine.backend, "images_per_s": round(len(photos) / statistics.median(seconds), 1),
                             "cosine_min": round(cosine.min().item(), 4), "cosine_mean": round(cosine.mean().item(), 4)}
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "batch": batch, "int8": int8_settings(),
              "int8_bar": INT8_COSINE, "rows": rows}
    for backend, row in rows.items():
        print(f"{backend:17s} ran {row['ran']:17s} {row['images_per_s']:6.1f} images/s   cosine to PyTorch's "
              f"min {row['cosine_min']:.4f} mean {row['cosine_mean']:.4f}")
    print(f"{result['cpu']}; {result['threads']} threads; int8 {result['int8']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
