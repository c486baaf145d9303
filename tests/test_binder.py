"""binder/ agrees with pyproject.toml, and its build step never fails for want of a network.

repo2docker runs `pip install -r binder/requirements.txt` from the repository root, with the
Python that binder/runtime.txt names, then binder/postBuild.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}


def parse_requirements(path: Path) -> tuple[list[Requirement], list[str], list[str]]:
    """(named requirements, local paths, option lines) of a pip requirements file."""
    named, local, options = [], [], []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e ", "--editable ")):
            local.append(line.split(None, 1)[1])
        elif line.startswith("-"):
            options.append(line)
        elif line.startswith((".", "/")):
            local.append(line)
        else:
            named.append(Requirement(line))
    return named, local, options


NAMED, LOCAL, OPTIONS = parse_requirements(BINDER / "requirements.txt")


def can_both_hold(a: SpecifierSet, b: SpecifierSet) -> bool:
    """Whether some version satisfies both sets: tried on every version either names, and the
    next micro, minor and major release of each (enough for the bounds pip files use)."""
    mentioned = {Version(s.version.rstrip(".*")) for s in [*a, *b]}
    candidates = {Version("0"), Version("9999")}
    for v in mentioned:
        major, minor, micro = (*v.release, 0, 0)[:3]
        candidates |= {v, Version(f"{major}.{minor}.{micro + 1}"),
                       Version(f"{major}.{minor + 1}"), Version(f"{major + 1}")}
    return any(a.contains(v, prereleases=True) and b.contains(v, prereleases=True)
               for v in candidates)


def test_the_project_itself_is_installed_from_the_repository_root():
    # pip reads a local path relative to its working directory: the repository root.
    assert len(LOCAL) == 1, f"expected one line installing the project, found {LOCAL}"
    assert (ROOT / LOCAL[0]).resolve() == ROOT
    # ...so every runtime dependency of pyproject.toml is installed through it.
    assert DEPENDENCIES


def test_torch_and_torchvision_come_from_the_cpu_index_unpinned():
    assert f"--extra-index-url {CPU_INDEX}" in OPTIONS
    names = {canonicalize_name(r.name): r for r in NAMED}
    for package in ("torch", "torchvision"):
        assert package in names, f"{package} is not named next to the CPU index"
        pins = [s for s in names[package].specifier if s.operator in ("==", "===")]
        assert not pins, f"{package} is pinned ({pins}): pip must resolve the pair together"


def test_named_packages_are_project_dependencies_with_compatible_constraints():
    for requirement in NAMED:
        name = canonicalize_name(requirement.name)
        assert name in DEPENDENCIES, (
            f"binder/requirements.txt installs {requirement.name}, which pyproject.toml does "
            "not depend on; add it there first")
        ours = DEPENDENCIES[name]
        assert can_both_hold(requirement.specifier, ours.specifier), (
            f"binder asks for {requirement}, pyproject.toml for {ours}: no version is both")
        assert not requirement.url, f"{requirement.name} comes from a URL, not the index"


def test_the_constraint_check_catches_contradictions():
    assert can_both_hold(SpecifierSet(">=2.2"), SpecifierSet(""))
    assert can_both_hold(SpecifierSet(">=2.2"), SpecifierSet("==2.5.1"))
    assert can_both_hold(SpecifierSet(">2.2"), SpecifierSet("<2.3"))
    assert not can_both_hold(SpecifierSet(">=2.2"), SpecifierSet("==2.1.0"))
    assert not can_both_hold(SpecifierSet(">=8.0"), SpecifierSet("<8"))


def test_the_runtime_is_a_python_the_project_supports():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-"), runtime
    version = runtime.removeprefix("python-")
    assert SpecifierSet(PROJECT["requires-python"]).contains(f"{version}.0"), \
        f"{runtime} but pyproject.toml requires Python {PROJECT['requires-python']}"


def test_post_build_is_an_executable_bash_script():
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK), "repo2docker runs postBuild only when it is executable"
    assert script.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
def test_post_build_succeeds_without_a_network(tmp_path):
    # A proxy on a closed port refuses every download at once: the build must still succeed.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TORCH_HOME": str(tmp_path / "torch"),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "could not pre-fetch the resnet18 weights" in done.stdout
    assert "the built-in feature extractor is ready" in done.stdout  # no download needed
    assert "shapes" in done.stdout and "digits" in done.stdout  # the datasets were prepared
