"""The benchmark runs both pipelines end to end and reports every figure the JSON promises (no timing is judged)."""

import pytest

from petclassifier.benchmark import format_table, run_benchmark
from petclassifier.config import TrainConfig
from petclassifier.errors import UserError

FIELDS = {"train_images_per_s", "infer_images_per_s", "latency_ms_p50", "latency_ms_p95", "epoch_seconds",
          "peak_rss_mb", "seconds_to_target_accuracy"}


def test_benchmark_reports_both_pipelines_and_refuses_a_used_folder(shapes_dir, cache_dir, tmp_path):
    cfg = TrainConfig(dataset="folder", data_dir=str(shapes_dir), model="smallcnn", image_size=32, epochs=2,
                      batch_size=4, workers=0, cache_dir=cache_dir)
    out = tmp_path / "bench"
    result = run_benchmark(cfg, tutorial_epochs=1, steps=2, repeats=3, out=str(out))
    assert {"device", "model", "image_size", "tutorial", "project"} <= set(result)
    for pipeline in ("tutorial", "project"):
        assert FIELDS <= set(result[pipeline]), pipeline
        measured = {k: result[pipeline][k] for k in FIELDS - {"seconds_to_target_accuracy"}}
        assert all(isinstance(v, (int, float)) and v > 0 for v in measured.values()), (pipeline, measured)
        assert measured["latency_ms_p95"] >= measured["latency_ms_p50"]
        assert measured["peak_rss_mb"] > 100  # this process holds torch: a figure in MB, not bytes or GB
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # the recipe's own epochs, nothing older
    assert "train_images_per_s" in format_table(result)
    with pytest.raises(UserError, match="new --out folder"):
        run_benchmark(cfg, tutorial_epochs=1, steps=2, repeats=3, out=str(out))
