"""The tree shows the architecture: folders by layer, each saying what lives there, and the layers kept by
import-linter's contracts in pyproject.toml (layers, inference never importing training, no import cycles)."""

import ast
import shutil
import subprocess

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "petclassifier"


def test_the_import_contracts_hold():
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 kept, 0 broken" in done.stdout


def test_at_most_ten_modules_at_the_top_and_each_folder_says_what_lives_there():
    assert len(list(PACKAGE.glob("*.py"))) <= 10
    folders = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert len(folders) >= 8
    for folder in folders:
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert docstring and len(docstring.splitlines()) == 1, folder
