"""The commands that look at photos with no trained model: `kind` (what animal) and `doctor` (what is wrong with a
dataset). Argument parsing only; the work is in petclassifier.inference.animals, doctor and sheets."""

from __future__ import annotations

import argparse

from ..errors import UserError


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
    from ..inference.animals import TOP_KINDS, kind_answer, kind_classifier, kind_text
    from .output import photo_paths, write_entries

    if args.workers < 0:
        raise UserError("--workers must be 0 or more")
    paths = photo_paths(args.paths, missing_ok=True)  # each missing path gets its own error entry
    classifier = kind_classifier(args.model, args.device)
    answers = (kind_answer(p) for p in classifier.iter_predictions(paths, top_k=TOP_KINDS, workers=args.workers))
    return 0 if write_entries(((a, lambda a=a: kind_text(a)) for a in answers), args.json, args.jsonl) else 1


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA", help="class folders (or train/ val/ test/ of them), or the folder "
                   "holding oxford-iiit-pet/")
    p.add_argument("--dataset", choices=("folder", "oxford-iiit-pet"),
                   help="default: oxford-iiit-pet where DATA holds oxford-iiit-pet/, else folder")
    p.add_argument("--json", metavar="REPORT", help="write the findings to this JSON file")
    p.add_argument("--out", metavar="DIR", help="draw a contact sheet of each list of findings in this folder")
    p.add_argument("--model", default="efficientnet_lite2", choices=("efficientnet_lite0", "efficientnet_lite1",
                                                                     "efficientnet_lite2"),
                   help="whose features and ImageNet classifier it reads (default efficientnet_lite2)")
    p.add_argument("--cache-dir", help="decoded photos and features kept (default ~/.cache/petclassifier)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what runs the network (default auto: as training)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_doctor(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..doctor.report import advice, examine

    found = examine(args.data_dir, args.dataset, args.model, args.cache_dir, args.backend, args.device, args.workers)
    print("\n".join(advice(found)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(found, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    if args.out:
        from ..doctor.sheets import draw_sheets

        for path in draw_sheets(found, Path(args.out)):
            print(f"wrote {path}")
    return 0
