"""Command line: `petclassifier COMMAND ...` (train, predict, evaluate, explain, ..., kind, doctor); scripts share
parsers."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from ..config import TrainConfig
from ..errors import SavedAndStopped, UserError
from .kind_doctor import add_doctor_arguments, add_kind_arguments, run_doctor, run_kind
from .output import chosen_checkpoint, photo_paths, write_entries
from .serve import add_cache_arguments, add_serve_arguments, run_cache, run_serve
from .train import add_train_arguments, run_train

PREDICT_BACKENDS = ("auto", "torch", "onnxruntime")  # predict runs the whole network: int8 is for the frozen pass

def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos, or folders searched recursively")
    p.add_argument("--checkpoint", help="a best.pt, or a run folder (default: the newest runs/*/best.pt)")
    p.add_argument("--top-k", type=int, default=5, help="labels listed per photo (default 5)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON array instead of text")
    output.add_argument("--jsonl", action="store_true", help="print one JSON object per photo, per line, as it goes")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes; 0 decodes in this one (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=PREDICT_BACKENDS,
                   help="what runs the network: onnxruntime runs the checkpoint's ONNX copy on the CPU (written on "
                   "first use, in the cache folder), without loading PyTorch; auto: onnxruntime on a CPU where it "
                   "is installed, else torch (default auto)")
    p.add_argument("--cache-dir", help="where ONNX copies are kept (default ~/.cache/petclassifier)")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a best.pt or last.pt, or a run folder (its best.pt)")
    p.add_argument("--format", default="torchscript", choices=("torchscript", "onnx"),
                   help="TorchScript (model.pt) or ONNX (model.onnx, needs the onnx extra); default torchscript")
    p.add_argument("--out", required=True, help="folder for the model file and its model.json sidecar")


def run_export(args: argparse.Namespace) -> int:
    from ..inference.export import export
    from ..models.checkpoint import checkpoint_file

    path = export(checkpoint_file(args.checkpoint), args.format, args.out)
    print(f"wrote {path} and {path.with_name('model.json')}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.workers < 0:
        raise UserError("--workers must be 0 or more")
    entries = ((r.as_dict(), r.as_text) for r in predictor(args))
    return 0 if write_entries(entries, args.json, args.jsonl) else 1


def predictor(args: argparse.Namespace):
    """The Predictions of the photos under args.paths, from the network on PyTorch or from its ONNX copy."""
    from ..config import default_cache_dir
    from ..engine.choice import choose_backend, gpu_present
    from ..inference import onnx_copy

    on_cpu = args.device == "cpu" or (args.device == "auto" and not gpu_present())
    backend = choose_backend(args.backend, on_cpu, "use --device cpu (or --backend torch)", PREDICT_BACKENDS)
    paths = photo_paths(args.paths, missing_ok=True)  # each missing path gets its own error entry
    if backend == "onnxruntime":  # the copy holds the class names: naming the newest checkpoint loads no PyTorch
        cache = args.cache_dir or default_cache_dir()
        copy_of = functools.cache(lambda path: onnx_copy.ready_copy(path, cache))  # made once, named, then used
        checkpoint = chosen_checkpoint(args.checkpoint, lambda path: copy_of(path).answers)
        return copy_of(checkpoint).iter_predictions(paths, args.top_k, args.workers)
    checkpoint = chosen_checkpoint(args.checkpoint)
    from ..inference.predict import PetClassifier

    classifier = PetClassifier.from_checkpoint(checkpoint, device=args.device)
    return classifier.iter_predictions(paths, top_k=args.top_k, workers=args.workers)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a best.pt, or a run folder (default: the newest runs/*/best.pt)")
    p.add_argument("--dataset", choices=("sample", "oxford-iiit-pet", "folder"),
                   help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-dir", help="dataset root (default: the checkpoint's)")
    p.add_argument("--task", choices=("breed", "species"),
                   help="Oxford task (default: the checkpoint's; breed for a model trained on a folder)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="all: every photo of the dataset, whatever its split (default test)")
    p.add_argument("--json", help="write the full report (metrics, per-class, confusion matrix) to this file")
    p.add_argument("--out", help="folder for confusion.png and mistakes.png")
    p.add_argument("--cache-dir", help="decoded-photo cache (default: the checkpoint's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_evaluate(args: argparse.Namespace) -> int:
    from ..insight.evaluate import evaluate_checkpoint, summary_lines, write_outputs

    checkpoint = chosen_checkpoint(args.checkpoint)
    result = evaluate_checkpoint(checkpoint, args.dataset, args.data_dir, args.task, args.split, args.cache_dir,
                                 args.device)
    print("\n".join(summary_lines(result["report"])))
    for path in write_outputs(result, args.out, args.json):
        print(f"wrote {path}")
    return 0


def add_explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PHOTO", help="photos, or folders searched recursively")
    p.add_argument("--checkpoint", help="a best.pt, or a run folder (default: the newest runs/*/best.pt)")
    p.add_argument("--out", default="explain", help="folder for the pictures (default explain/)")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="also show the evidence for this class (repeatable)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_explain(args: argparse.Namespace) -> int:
    from ..inference.predict import PetClassifier
    from ..insight.explain import explain_photos
    from ..insight.plots import pyplot

    pyplot()  # fail early, before any work, when matplotlib is missing
    classifier = PetClassifier.from_checkpoint(chosen_checkpoint(args.checkpoint), device=args.device)
    paths = photo_paths(args.paths)
    for path in explain_photos(classifier, paths, args.out, args.classes):
        print(f"wrote {path}")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("sample", "oxford-iiit-pet", "folder"), default="sample")
    p.add_argument("--data-dir", help="dataset root (Oxford: the folder holding oxford-iiit-pet/)")
    p.add_argument("--task", choices=("breed", "species"), help="Oxford task (default: both)")
    p.add_argument("--epochs", type=int, help="epochs of the from-scratch smallcnn (default: its recipe's 36)")
    p.add_argument("--json", help="write {'rows': [...]} to this file")
    p.add_argument("--out", default="runs/compare", help="folder for the trained runs and comparison.png")
    p.add_argument("--cache-dir", help="decoded-photo cache (default ~/.cache/petclassifier)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_compare(args: argparse.Namespace) -> int:
    from ..insight.compare import compare, plots_available, table, write_outputs

    tasks = [args.task] if args.task else (["breed", "species"] if args.dataset != "folder" else ["folder"])
    base = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, workers=args.workers,
                       device=args.device)
    print("each method trains with its full recipe: smallcnn learns every layer from these photos (on 2 CPU cores "
          "about 6 minutes per 1,000 photos; --epochs shortens it), the pretrained model only its head")
    rows = compare(base, tasks, Path(args.out), epochs=args.epochs)
    print(table(rows))
    chart = Path(args.out) / "comparison.png" if plots_available() else None
    if chart is None:
        print('note: no chart drawn; pip install -e ".[plots]" to get one')
    write_outputs(rows, args.json, chart)
    if chart:
        print(f"wrote {chart}")
    return 0


COMMANDS = {
    "train": (add_train_arguments, run_train, "train a classifier and save checkpoints in a run folder"),
    "predict": (add_predict_arguments, run_predict, "rank labels for photos with a trained checkpoint"),
    "export": (add_export_arguments, run_export, "write a checkpoint as TorchScript or ONNX, with a JSON sidecar"),
    "evaluate": (add_evaluate_arguments, run_evaluate, "accuracy, per-class metrics and confusions on a split"),
    "explain": (add_explain_arguments, run_explain, "Grad-CAM heat-maps, filters and feature maps for photos"),
    "compare": (add_compare_arguments, run_compare, "hand-crafted features vs learned ones, on the same split"),
    "cache": (add_cache_arguments, run_cache, "decoded photos and frozen features kept: size, --limit-gb, --clear"),
    "serve": (add_serve_arguments, run_serve, "a local web page and JSON API: drop photos, see labels and Grad-CAM"),
    "kind": (add_kind_arguments, run_kind, "the kind of animal in photos (cat, dog, hamster, ...), no training"),
    "doctor": (add_doctor_arguments, run_doctor, "what is wrong with a dataset: duplicates, leakage, wrong labels, "
               "no pet, unreadable, small classes"),
}


class Parser(argparse.ArgumentParser):
    """argparse with whole flags only (no `--epoch` for `--epochs`) and each error on one line, status 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def unknown(self, arguments: list[str]):
        """The error for arguments no flag takes, naming the closest flag to the first unknown one."""
        import difflib

        flags = [flag for flag in arguments if flag.startswith("-")]
        if not flags:
            self.error(f"unexpected argument {arguments[0]}")
        flag = flags[0].split("=")[0]
        known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        self.error(f"unknown flag {flag}" + (f" (did you mean {close[0]}?)" if close else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="petclassifier", description="Pet photo classifier (PyTorch).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        p.set_defaults(command_parser=p)
    return parser


def package_version() -> str:
    """The installed distribution's version; the package's own where it runs uninstalled (from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("petclassifier")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:  # `petclassifier` alone: say what it can do
        if unknown:
            parser.unknown(unknown)
        parser.print_help()
        return 0
    if unknown:  # named by the command's own parser, with its flags
        args.command_parser.unknown(unknown)
    try:
        return COMMANDS[args.command][1](args)
    except (UserError, FloatingPointError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if not isinstance(e, SavedAndStopped):  # that one has said where it stopped and how to go on
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `predict ... | head` stopped reading: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
