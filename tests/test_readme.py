"""The front page: short, its figures rendered from the reports, its links and quickstart commands working, and the
measured Oxford subset rebuildable from the full dataset."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

from PIL import Image

from petclassifier.config import TrainConfig
from petclassifier.data.datasets import load_data

from .conftest import ROOT

README = ROOT / "README.md"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links and all((ROOT / link).exists() for link in links if "://" not in link), links


def test_the_results_table_is_the_rendering_of_the_evaluation_reports():
    results = script("results_table")
    text = README.read_text()
    assert results.rendered(text, ROOT / "docs" / "results") == text  # else: python scripts/results_table.py
    assert text.count("| oxford-iiit-pet |") == len(list((ROOT / "docs" / "results").glob("*.json"))) >= 2


def test_the_recipe_tables_are_the_rendering_of_their_measurements():
    results = script("results_table")
    text = (ROOT / "docs" / "recipe.md").read_text()
    assert results.rendered_choices(text, ROOT / "docs") == text  # else: python scripts/results_table.py
    assert "the test list unread" in (ROOT / "docs" / "recipe-choice.json").read_text()
    insight = (ROOT / "docs" / "insight.md").read_text()
    assert results.between(insight, results.FLAG_START, results.FLAG_END,
                           results.flag_table(ROOT / "docs" / "not-a-pet.json")) == insight


TINY_RUN = ["--image-size", "64", "--epochs", "2", "--augment-views", "1"]  # the bundled photos, seconds not minutes


def test_the_quickstart_commands_run_from_a_clone(tmp_path):
    """The Quickstart's commands as printed, in a fresh folder, the training run made tiny (serve is left out: it
    runs until stopped)."""
    block = README.read_text().split("## Quickstart", 1)[1].split("\n\n", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[0] == "python scripts/train.py" and any("serve" in c for c in commands)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (c for c in commands if "serve" not in c):
        argv = [a.replace("scripts/", f"{ROOT}/scripts/").replace("data/", f"{ROOT}/data/", 1)
                for a in shlex.split(command)]
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", *argv]
        argv += TINY_RUN if command == "python scripts/train.py" else []
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        if "pug_12.jpg" in command:  # a model of 2 epochs at 64 px may not say pug yet: the line's form
            assert re.fullmatch(rf"{ROOT}/data/oxford-iiit-pet/images/pug_12.jpg: (\w+ \d+\.\d%, ){{4}}\w+ \d+\.\d%"
                                r"  \[(cat|dog) \d+\.\d%\]\n", done.stdout), done.stdout


def test_the_measured_subset_is_rebuilt_from_the_full_dataset(tmp_path):
    make_subset = script("make_subset")
    ids = {split: (make_subset.IDS / f"{split}.txt").read_text().split() for split in ("trainval", "test")}
    assert (len(ids["trainval"]), len(ids["test"])) == (1000, 864)
    full = tmp_path / "full" / "oxford-iiit-pet"
    (full / "images").mkdir(parents=True)
    (full / "annotations").mkdir()
    extra = ["beagle_9999"]  # in the full dataset, not in the subset
    breeds = sorted({i.rsplit("_", 1)[0] for i in ids["trainval"]}, key=str.lower)
    for split, names in (("trainval", ids["trainval"] + extra), ("test", ids["test"])):
        lines = [f"{i} {breeds.index(i.rsplit('_', 1)[0]) + 1} {1 if i[0].isupper() else 2} 1" for i in names]
        (full / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    for i in ids["trainval"] + ids["test"] + extra:
        Image.new("RGB", (8, 8), (i.__hash__() % 255, 90, 160)).save(full / "images" / f"{i}.jpg", "JPEG")
    assert make_subset.build(full, tmp_path / "subset") == 1864
    written = tmp_path / "subset" / "oxford-iiit-pet"
    assert len(list((written / "images").iterdir())) == 1864 and not (written / "images" / "beagle_9999.jpg").exists()
    data = load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(tmp_path / "subset")).resolved())
    assert len(data.class_names) == 37 and len(data.train.paths) + len(data.val.paths) == 1000
    assert len(data.test.paths) == 864
