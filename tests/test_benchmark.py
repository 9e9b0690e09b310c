"""The benchmark script measures everything end to end on tiny photos and writes every JSON key (no timing judged)."""

import json
import subprocess
import sys

import pytest

from petclassifier.benchmark import train_flags, train_result
from petclassifier.config import TrainConfig

from .conftest import ROOT, make_folder

RUNS = {"tutorial", "tutorial_frozen", "project_cold", "project_warm", "project_fast"}
THRESHOLDS = {"0.80", "0.85", "0.90"}


def test_benchmark_script_writes_every_figure_of_both_pipelines(tmp_path):
    data = make_folder(tmp_path / "shapes", per_class=6, splits=("train", "val", "test"))
    out, report, chart = tmp_path / "bench", tmp_path / "bench.json", tmp_path / "bench.png"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--dataset", "folder", "--data-dir", str(data),
               "--model", "efficientnet_lite0", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
               "--workers", "0", "--out", str(out), "--json", str(report), "--plot", str(chart),
               "--tutorial-epochs", "2", "--steps", "2", "--repeats", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    sections = {"device", "model", "threads", "train", "predict_folder", "latency_ms", "train_step", "startup"}
    assert sections <= set(result)
    assert result["model"] == "efficientnet_lite0" and result["threads"] >= 1

    assert set(result["train"]) == RUNS
    for name, run in result["train"].items():  # figures measured and consistent with each other; no speed judged
        assert isinstance(run["seconds"], float) and 0 <= run["test_accuracy"] <= 1, name
        assert len(run["curve"]) == 2 and all(0 <= accuracy <= 1 for _, accuracy in run["curve"]), name  # 2 epochs
        first_at = {t: next((at for at, acc in run["curve"] if acc >= float(t)), None) for t in THRESHOLDS}
        assert run["seconds_to_val_accuracy"] == first_at, name  # each threshold's time is its first epoch's
    # the project's warm run decoded nothing: its cache was the cold run's
    assert "decoded" in (out / "project_cold.log").read_text()
    assert "decoded" not in (out / "project_warm.log").read_text()

    assert {"tutorial", "project"} <= set(result["predict_folder"])
    assert all(v["images_per_s"] > 0 for v in result["predict_folder"].values())
    assert {"tutorial", "project"} <= set(result["latency_ms"])
    assert all(v["p50"] <= v["p95"] for v in result["latency_ms"].values())  # the quantiles' order, not a speed
    assert set(result["train_step"]) == {"tutorial", "project", "compute_bound"}
    assert all(v["images_per_s"] > 0 for v in result["train_step"].values())

    startup = result["startup"]
    assert set(startup) == {"help_seconds", "help_peak_rss_mb", "predict_one_seconds", "predict_one_peak_rss_mb"}
    assert all(isinstance(v, float) for v in startup.values())
    assert startup["help_peak_rss_mb"] < startup["predict_one_peak_rss_mb"] / 3  # memory: --help loads no torch
    assert chart.stat().st_size > 0
    assert "project_fast" in done.stdout and "latency_ms" in done.stdout


def test_runs_are_given_the_flags_of_their_config_and_reach_thresholds_in_order():
    cfg = TrainConfig(dataset="folder", data_dir="/photos", image_size=32, refit=False, balance=True, cache_dir="/c")
    flags = train_flags(cfg, epochs=3)
    assert flags == ["--dataset", "folder", "--data-dir", "/photos", "--image-size", "32", "--epochs", "3",
                     "--balance", "--no-refit"]
    reached = train_result(30.0, 0.9, [[10.0, 0.5], [20.0, 0.86], [30.0, 0.95]])["seconds_to_val_accuracy"]
    assert reached == {"0.80": 20.0, "0.85": 20.0, "0.90": 30.0}
    assert train_result(5.0, 0.5, [[5.0, 0.5]])["seconds_to_val_accuracy"] == dict.fromkeys(THRESHOLDS)


@pytest.mark.parametrize("wrong", ["folder", "model"])
def test_a_wrong_folder_or_model_is_one_line_before_any_run(tmp_path, wrong):
    data = make_folder(tmp_path / "shapes", per_class=2, splits=("train", "val")) if wrong == "model" else tmp_path
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--dataset", "folder", "--data-dir",
               str(data / "nowhere" if wrong == "folder" else data), "--model",
               "efficientnet_lite9" if wrong == "model" else "smallcnn", "--out", str(tmp_path / "bench")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert ("did you mean efficientnet_lite2" in done.stderr) == (wrong == "model")
    assert not (tmp_path / "bench").exists()  # refused before any run started
