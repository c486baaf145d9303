"""Every command the README shows is exercised: the terminal lines run, the make targets
exist, each quoted benchmark has a test, and the notebook quick start runs."""

import re
import subprocess
import sys

from conftest import ROOT

import mlwidgets as mw

README = (ROOT / "README.md").read_text()


def code_blocks(after_heading: str = "") -> list[str]:
    text = README[README.index(after_heading):] if after_heading else README
    return re.findall(r"```(?:\w+)?\n(.*?)```", text, flags=re.S)


def test_the_terminal_lines_after_the_demo_run(trained_dir):
    lines = [line for block in code_blocks() for line in block.splitlines()
             if line.startswith(".venv/bin/mlwidgets ")]
    assert len(lines) >= 3
    mw.datasets.shapes()  # the files the predict line names
    for line in lines:
        command = line.split("#")[0].strip()
        command = command.replace(".venv/bin/mlwidgets", f"{sys.executable} -m mlwidgets")
        command = command.replace("sessions/demo-…", str(trained_dir))
        command = command.replace("~/.cache/mlwidgets", str(mw.datasets.cache_dir()))
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, (line, result.stderr)
        assert result.stdout.strip(), line


def test_every_make_target_it_names_exists():
    targets = set(re.findall(r"(?:`|^)make (\w+)", README, flags=re.M))
    assert {"demo", "test", "lab", "bench", "lint"} <= targets
    for target in targets:
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 0, (target, result.stderr)


def test_every_benchmark_it_quotes_is_run_by_the_tests():
    quoted = set(re.findall(r"benchmarks/(\w+)\.py", README))
    tested = (ROOT / "tests" / "test_benchmarks.py").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert quoted >= {"overhead", "export", "image_cache", "transfer", "ui"}
    for name in quoted:
        assert f'"{name}.py"' in tested and f"benchmarks/{name}.py" in makefile, name


def test_the_notebook_quick_start_runs():
    block = code_blocks("## In a notebook: the Studio")[0]
    scope: dict = {}
    exec(block, scope)  # noqa: S102 - the README's own three lines
    studio = scope["studio"]
    assert isinstance(studio, mw.ui.Studio) and studio.get_title(0) == "Data"
    studio.close()
