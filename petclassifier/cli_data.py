"""The commands that look at photos with no trained model: `kind` (what animal) and `doctor` (what is wrong with a
dataset). Argument parsing only; the work is in petclassifier.animals and petclassifier.doctor."""

from __future__ import annotations

import argparse

from .errors import UserError


def add_kind_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos, or folders searched recursively")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON array instead of text")
    output.add_argument("--jsonl", action="store_true", help="print one JSON object per photo, per line, as it goes")
    p.add_argument("--model", default="efficientnet_lite2", choices=("efficientnet_lite0", "efficientnet_lite1",
                                                                     "efficientnet_lite2"),
                   help="whose ImageNet classifier tells the kinds (default efficientnet_lite2)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes; 0 decodes in this one (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_kind(args: argparse.Namespace) -> int:
    from .animals import TOP_KINDS, kind_answer, kind_classifier, kind_text
    from .cli import write_entries
    from .images import expand_paths

    if args.workers < 0:
        raise UserError("--workers must be 0 or more")
    paths = expand_paths(args.paths, missing_ok=True)  # each missing path gets its own error entry
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.paths)}")
    classifier = kind_classifier(args.model, args.device)
    answers = (kind_answer(p) for p in classifier.iter_predictions(paths, top_k=TOP_KINDS, workers=args.workers))
    return 0 if write_entries(((a, lambda a=a: kind_text(a)) for a in answers), args.json, args.jsonl) else 1
