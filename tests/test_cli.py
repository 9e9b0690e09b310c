"""The scripts end to end, in subprocesses, as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

from petclassifier import PetClassifier
from petclassifier.models.checkpoint import load_checkpoint

from .conftest import ROOT, make_folder


def run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_train_then_predict_from_the_command_line(shapes_dir, tmp_path):
    out = tmp_path / "run"
    trained = run("train.py", "--dataset", "folder", "--data-dir", shapes_dir, "--model", "smallcnn",
                  "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0",
                  "--cache-dir", tmp_path / "cache", "--out", out)
    assert trained.returncode == 0, trained.stderr
    last_line = trained.stdout.strip().splitlines()[-1]
    assert "accuracy" in last_line and str(out / "best.pt") in last_line

    predicted = run("predict.py", "--checkpoint", out / "best.pt", "--json", "--top-k", "2", shapes_dir)
    assert predicted.returncode == 0, predicted.stderr
    results = json.loads(predicted.stdout)
    assert [r["path"] for r in results] == sorted(str(p) for p in shapes_dir.rglob("*.png"))
    assert all(len(r["predictions"]) == 2 for r in results)

    # with no --checkpoint, the newest runs/*/best.pt under the working directory is used, and named
    (tmp_path / "runs").mkdir()
    out.rename(tmp_path / "runs" / "run")
    photo = next(shapes_dir.rglob("*.png"))
    text = run("predict.py", photo, cwd=tmp_path)
    chosen = Path("runs") / "run" / "best.pt"
    assert text.returncode == 0 and f"using the newest checkpoint, {chosen} (folder: disc, square)" in text.stderr
    label, probability = PetClassifier.from_checkpoint(tmp_path / chosen, device="cpu").predict(photo)[0]
    assert text.stdout.startswith(f"{photo}: {label} {probability:.1%}, ")  # the same answer as in Python


def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path, shapes_dir):
    mistakes = ((["--dataset", "folder", "--data-dir", tmp_path / "missing"], "no folder"),
                (["--model", "no_such_net", "--dataset", "folder", "--data-dir", shapes_dir], "unknown model"))
    for args, message in mistakes:
        result = run("train.py", *args, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    missing = run("predict.py", "--checkpoint", tmp_path / "nope.pt", tmp_path)
    assert missing.returncode == 2 and "no checkpoint file" in missing.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run("train.py", "--dataset", "folder", "--data-dir", tmp_path / "missing", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_module_entry_point_lists_the_commands_with_or_without_help():
    for args in (["--help"], []):
        result = subprocess.run([sys.executable, "-m", "petclassifier", *args], capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert all(f"    {command} " in result.stdout for command in ("train", "predict", "evaluate", "export"))


def test_an_unknown_or_shortened_flag_is_one_line_naming_the_closest_flag_with_status_2():
    for given, said in ((["--datset", "folder"], "unknown flag --datset (did you mean --dataset?)"),
                        (["--epoch", "5"], "unknown flag --epoch (did you mean --epochs?)"),  # no abbreviations
                        (["--no-such-flag"], "unknown flag --no-such-flag"),
                        (["--backend", "tpu"], "argument --backend: invalid choice: 'tpu'")):
        result = run("train.py", *given)
        assert result.returncode == 2 and result.stdout == "", given
        assert result.stderr.startswith(f"petclassifier train: error: {said}"), result.stderr
        assert result.stderr.endswith("; see petclassifier train --help\n") and result.stderr.count("\n") == 1


def test_oxford_without_a_data_dir_looks_in_one_documented_place_and_never_swaps_datasets(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share")}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--dataset", "oxford-iiit-pet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    expected = tmp_path / "share" / "petclassifier" / "oxford-iiit-pet"
    assert result.returncode == 2 and f"no Oxford-IIIT Pet in {expected}" in result.stderr, result.stderr
    assert "--data-dir" in result.stderr and "--download" in result.stderr and result.stdout == ""


def test_a_folder_run_is_named_and_recorded_as_what_it_is(tmp_path):
    photos = make_folder(tmp_path / "my_pets", per_class=4)
    result = run("train.py", "--dataset", "folder", "--data-dir", photos, "--model", "smallcnn", "--image-size", "32",
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--cache-dir", tmp_path / "cache",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "for 1 epoch;" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-smallcnn-my_pets")
    assert json.loads((run_dir / "config.json").read_text())["task"] == "folder"
    assert load_checkpoint(run_dir / "best.pt")["task"] == "folder"


def test_help_loads_no_torch_and_the_package_still_hands_on_its_names():
    """`petclassifier --help`, `train --help` and `serve --help` import neither torch, the models nor the web server;
    the package's names load when used, and `petclassifier.train` is the function beside the module training.py."""
    import subprocess
    import sys

    code = ("import sys\nfrom petclassifier.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['serve', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'petclassifier.models.registry', 'starlette',\n"
            "                         'uvicorn')\n"
            "             if m in sys.modules))\n"
            "import petclassifier, petclassifier.training.run\n"
            "print(petclassifier.train.__name__, petclassifier.fit.__name__, petclassifier.PetClassifier.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-2:] == ["[]", "train fit PetClassifier"], out


def test_inference_checkpoints_data_and_models_never_import_the_training_loop():
    """A command loads only what it runs: predict, export, the web server and their layers below never load
    the training run or the distributed code."""
    import subprocess
    import sys

    code = ("import sys\nimport petclassifier.inference.predict, petclassifier.inference.export\n"
            "import petclassifier.models.checkpoint, petclassifier.models.registry\n"
            "import petclassifier.data.datasets, petclassifier.data.cache, importlib.util\n"
            "if importlib.util.find_spec('starlette'):\n    import petclassifier.web.app\n"
            "from petclassifier.models.checkpoint import library_versions\nlibrary_versions()\n"
            "print([m for m in ('petclassifier.training.run', 'petclassifier.engine.loop', "
            "'petclassifier.distributed') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]"]


def test_version_prints_the_version_and_an_unknown_option_is_an_error(capsys):
    import importlib.metadata

    import pytest

    from petclassifier import __version__
    from petclassifier.cli import main

    try:
        expected = importlib.metadata.version("petclassifier")
    except importlib.metadata.PackageNotFoundError:
        expected = __version__
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code in (0, None) and capsys.readouterr().out == f"petclassifier {expected}\n"
    with pytest.raises(SystemExit) as ended:
        main(["--bogus"])
    said = capsys.readouterr()
    assert ended.value.code == 2 and said.out == "", said.out  # an argparse error, not the help
    assert said.err == "petclassifier: error: unknown flag --bogus; see petclassifier --help\n"
    with pytest.raises(SystemExit) as ended:
        main(["train", "--help"])  # the help is as argparse draws it
    assert ended.value.code == 0 and capsys.readouterr().out.startswith("usage: petclassifier train [-h]")


def test_every_train_flag_says_what_it_does_and_no_default_reads_none(capsys):
    import argparse

    from petclassifier.cli.train import add_train_arguments

    parser = argparse.ArgumentParser(prog="petclassifier train")
    add_train_arguments(parser)
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings and a.dest != "help"}
    assert not [flag for flag, text in helps.items() if not text or "None" in text], helps
    assert "auto" in helps["--device"] and "CUDA" in helps["--device"]
    assert "breed" in helps["--task"] and "folder" in helps["--task"]
    assert helps["--batch-size"].endswith("(default: recipe, from the number of photos)")
    parser.print_help()
    assert "(default None)" not in capsys.readouterr().out
