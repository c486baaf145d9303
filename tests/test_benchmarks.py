"""The benchmarks run and end with their JSON figures (tiny settings: this checks they
work, not how fast anything is; `make bench` measures)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def run_benchmark(name, *args):
    result = subprocess.run([sys.executable, f"benchmarks/{name}", *args], capture_output=True,
                            text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_overhead_benchmark_prints_its_ratio():
    table, figures = run_benchmark("overhead.py", "--iterations", "1", "--repeats", "1")
    assert "overhead ratio" in table and figures["overhead_ratio"] > 0


@pytest.mark.slow
def test_export_benchmark_prints_sizes_and_verification():
    table, figures = run_benchmark("export.py", "--architecture", "small_cnn",
                                   "--image-size", "32", "--repeats", "1", "--images", "8")
    assert "export ratio" in table and figures["export_ratio"] > 0
    assert set(figures["size_ratio"]) == {"float32", "float16", "int8", "palettize-6"}
    assert figures["verify_top1_agreement"] == 1.0


@pytest.mark.slow
def test_image_cache_benchmark_prints_its_speedups():
    table, figures = run_benchmark("image_cache.py", "--iterations", "1", "--repeats", "1",
                                   "--small-size", "0")
    assert "cache speedup" in table and figures["cache_speedup"] > 0
    assert figures["malloc_cache_faults_per_epoch_default"] >= 0


@pytest.mark.slow
def test_transfer_benchmark_prints_both_ratios():
    table, figures = run_benchmark("transfer.py", "--iterations", "2", "--image-size", "32",
                                   "--images-per-class", "10", "--demo-iterations", "1",
                                   "--demo-repeats", "1", "--extraction-repeats", "1",
                                   "--repeats", "1", "--demo-images-per-class", "4",
                                   "--demo-image-size", "32")
    assert "(1)/(2)" in table and "(2)/(3)" in table and "decoded-image cache" in table
    assert "bare channels-last forward pass" in table and "peak RSS" in table
    assert figures["extraction"]["ratio"] > 0 and figures["demo_rss"]["peak_rss_mb"] > 0
    assert figures["demo"]["cache_epoch_speedup"] > 0
    assert figures["fastai_over_ours"] > 0 and figures["ours_over_floor"] > 0


@pytest.mark.slow
def test_ui_benchmark_prints_the_studio_ratio_chart_cost_and_scrub_time():
    table, figures = run_benchmark("ui.py", "--iterations", "1", "--repeats", "1",
                                   "--checkpoints", "30", "--reports", "20")
    assert "Studio attached / alone" in table and figures["studio_ratio"] > 0
    assert figures["scrub_median_ms"] > 0 and figures["chart_update_median_ms"] > 0


@pytest.mark.slow
def test_understand_benchmark_prints_compare_scan_and_label_flip_figures():
    table, figures = run_benchmark("understand.py", "--checkpoints", "6", "--pairs", "3",
                                   "--images", "48", "--images-per-class", "6",
                                   "--image-size", "32", "--scan-image-size", "32",
                                   "--repeats", "1")
    assert "recall@2k" in table and figures["compare_median_ms"] > 0
    assert figures["first_prediction_ratio_features"] > 0 and figures["scan_s"] > 0
    assert 0 <= figures["recall_at_2k"] <= 1 and figures["flipped"] >= 1


def test_commit_benchmark_prints_blocked_times():
    table, figures = run_benchmark("commits.py", "--architecture", "small_cnn", "--repeats", "1")
    assert "background: snapshot only" in table
    assert {"synchronous_ms", "background_ms", "short_iterations_ms"} <= set(figures)


@pytest.mark.slow
def test_scale_benchmark_prints_runners_side_by_side():
    table, figures = run_benchmark("scale.py", "--iterations", "1", "--repeats", "1",
                                   "--image-size", "16", "--images-per-class", "10")
    assert "process runner, 2 workers" in table and "skipping per-GPU scaling" in table
    assert {"process_over_thread", "two_workers_speedup"} <= set(figures)
