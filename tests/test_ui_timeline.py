"""The checkpoint timeline, its Core ML export form and the download link, driven headless."""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import mlwidgets as mw
from mlwidgets.checkpoints import Checkpoint
from mlwidgets.coreml import ExportError
from mlwidgets.ui import timeline as timeline_module
from mlwidgets.ui.export import ExportForm, swift_class_name
from mlwidgets.ui.filelink import FileLink, server_path, server_root
from mlwidgets.ui.timeline import CheckpointTimeline


@pytest.fixture
def timeline(trained_dir: Path) -> CheckpointTimeline:
    return CheckpointTimeline(mw.TrainingSession.restore(trained_dir))


def heatmap_z(tl: CheckpointTimeline) -> list[list[int]] | None:
    return [list(row) for row in tl.heatmap.data[0].z] if tl.heatmap.data else None


# -- scrubbing ---------------------------------------------------------------------------


def test_slider_spans_the_checkpoints_with_labels_and_the_best_marked(timeline):
    session = timeline.session
    checkpoints = session.checkpoints
    best = session.checkpoint("best")
    assert timeline.slider.max == len(checkpoints) - 1 == 2
    assert timeline.selected.id == checkpoints[-1].id  # starts on the latest
    for c, label in zip(checkpoints, timeline.labels):
        accuracy = f"{c.metrics['valid_accuracy']:.2f}"
        assert label.startswith(f"it {c.iteration} · val acc {accuracy}")
        assert label.endswith("★") == (c.id == best.id)
    timeline.best_button.click()
    assert timeline.selected.id == best.id
    assert timeline.slider.value == timeline.best_index
    assert "★" in timeline.label.value
    assert "best: the lowest validation loss" in timeline.details.value


def test_select_by_id_and_index_shows_that_checkpoints_metrics_and_confusion(timeline):
    first, second = timeline.session.checkpoints[:2]
    assert timeline.select(0).id == first.id and timeline.slider.value == 0
    shown = timeline.details.value
    assert f"iteration {first.iteration}" in shown and f"step {first.step_number}" in shown
    assert f"{first.metrics['valid_loss']:.4f}" in shown
    assert first.confusion is not None and heatmap_z(timeline) == first.confusion
    timeline.select(second.id)
    assert timeline.selected is second and timeline.slider.value == 1
    assert timeline.details.value != shown and f"{second.metrics['valid_loss']:.4f}" in (
        timeline.details.value)
    assert heatmap_z(timeline) == second.confusion
    timeline.slider.value = 2  # the user drags the slider
    assert timeline.selected.id == timeline.session.checkpoints[2].id
    assert timeline.select(-3).id == first.id
    with pytest.raises(KeyError, match="no-such"):
        timeline.select("no-such")
    with pytest.raises(IndexError):
        timeline.select(3)


def test_restore_button_gives_the_checkpoints_classifier_and_tells_subscribers(timeline):
    restored = []
    unsubscribe = timeline.on_restore(restored.append)
    checkpoint = timeline.select(0)
    timeline.restore_button.click()
    assert timeline.classifier is not None and restored == [timeline.classifier]
    assert timeline.classifier.checkpoint.id == checkpoint.id
    images = timeline.session.verification_images(8)
    expected = mw.ImageClassifier.from_checkpoint(checkpoint).probabilities(images)
    np.testing.assert_array_equal(timeline.classifier.probabilities(images), expected)
    assert "Restored" in timeline.status.value
    unsubscribe()
    timeline.select(1)
    timeline.restore()
    assert len(restored) == 1 and timeline.classifier.checkpoint.id != checkpoint.id


def test_refresh_follows_the_latest_or_keeps_the_selected_checkpoint(trained_copy):
    session = mw.TrainingSession.restore(trained_copy)
    tl = CheckpointTimeline(session)
    latest = session.latest_checkpoint
    newer = session.store.commit(phase="training", iteration=latest.iteration + 1,
                                 step_number=latest.step_number + 2, metrics=latest.metrics,
                                 model_state=None)
    tl.refresh()
    assert tl.selected.id == newer.id and tl.slider.max == 3  # the latest was selected
    first = tl.select(0)
    session.store.commit(phase="training", iteration=newer.iteration + 1,
                         step_number=newer.step_number + 2, metrics=latest.metrics,
                         model_state=None)
    tl.refresh()
    assert tl.selected.id == first.id and tl.slider.max == 4
    second = tl.select(1)
    session.store.delete(second.id)  # as retention does
    tl.refresh()
    assert tl.slider.max == 3 and tl.selected.id == session.checkpoints[1].id


def test_a_checkpoint_without_a_classifier_cannot_be_restored_and_says_why(trained_copy):
    session = mw.TrainingSession.restore(trained_copy)
    tl = CheckpointTimeline(session)
    features = session.store.commit(phase="extracting_features", iteration=2, step_number=0,
                                    metrics={}, model_state=None)
    tl.refresh()
    tl.select(features.id)
    assert tl.labels[0] == "features it 2" and tl.restore_button.disabled
    assert heatmap_z(tl) is None
    with pytest.raises(ValueError, match="holds no classifier"):
        tl.restore()
    assert "holds no classifier" in tl.status.value and tl.classifier is None


# -- exporting ---------------------------------------------------------------------------


def test_export_click_writes_package_zip_size_verification_and_link(trained_copy, tiny_data_dir,
                                                                    tmp_path, monkeypatch):
    # The notebook runs in <root>/notebooks; Jupyter Server < 2.11 names it from the root.
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/studio.ipynb")
    tl = CheckpointTimeline(mw.TrainingSession.restore(trained_copy))
    tl.select(1)
    form = tl.export_form
    # Named after the data folder, as a Swift class name (Xcode makes the file name the class).
    package = trained_copy / "exports" / f"{swift_class_name(tiny_data_dir.name)}.mlpackage"
    assert Path(form.file_name.value) == package and package.stem.isidentifier()
    form.author.value = "Ada"
    started = time.perf_counter()
    form.export_button.click()
    seconds = time.perf_counter() - started
    assert package.is_dir() and form.result.path == package, form.status.value
    archive = package.with_name(package.name + ".zip")
    with zipfile.ZipFile(archive) as z:
        assert f"{package.name}/Manifest.json" in z.namelist()
    assert form.report.top1_agreement == 1.0 and form.report.n_images > 0
    status = form.status.value
    assert "MB" in status or "kB" in status
    assert "top-1 agreement 100.0%" in status
    assert form.link.path == archive.relative_to(tmp_path).as_posix()
    assert form.link.filename == archive.name and form.download.children == (form.link,)
    assert not list(package.parent.glob(".tmp-*"))
    # The next export would clash: the form offers the next free class-like name.
    assert Path(form.file_name.value) == package.with_name(f"{package.stem}2.mlpackage")
    print(f"export + zip + verify: {seconds:.1f} s")


def test_export_names_are_swift_class_names():
    assert [swift_class_name(n) for n in ("shapes", "my-images", "cats & dogs", "3d", "")] == \
        ["Shapes", "MyImages", "CatsDogs", "Model3d", "Model"]


def test_export_never_overwrites_and_names_the_file(trained_copy, tmp_path):
    tl = CheckpointTimeline(mw.TrainingSession.restore(trained_copy))
    existing = tmp_path / "mine.mlpackage"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        tl.export(existing, author="Ada")
    assert str(existing) in tl.export_form.status.value
    assert (existing / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "mine.mlpackage.zip").exists() and tl.classifier is None
    assert tl.export_form.author.value == "Ada"  # what was asked stays in the form
    stale_zip = tmp_path / "other.mlpackage.zip"
    stale_zip.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="other.mlpackage.zip"):
        tl.export(tmp_path / "other.mlpackage")
    assert stale_zip.read_bytes() == b"old" and not (tmp_path / "other.mlpackage").exists()
    with pytest.raises(ValueError, match="model.onnx"):
        tl.export(tmp_path / "model.onnx")
    assert "model.onnx" in tl.export_form.status.value
    with pytest.raises(ValueError, match="compression"):
        tl.export(tmp_path / "x.mlpackage", compression="zip")


def test_a_failed_conversion_names_the_file_and_leaves_nothing(tmp_path):
    class Unconvertible:
        checkpoint = None

        def write(self, path, *args, **kwargs):
            raise ExportError("converting the model to a Core ML mlprogram failed: boom")

    form = ExportForm(Unconvertible())
    target = tmp_path / "broken.mlpackage"
    with pytest.raises(ExportError, match="boom"):
        form.export(target)
    assert str(target) in form.status.value and "boom" in form.status.value
    assert list(tmp_path.iterdir()) == [] and form.link is None
    assert not form.export_button.disabled


# -- the download link -------------------------------------------------------------------


def test_server_root_from_a_relative_session_name(tmp_path):
    cwd = tmp_path / "a" / "b"
    env = {"JPY_SESSION_NAME": "a/b/n.ipynb"}
    assert server_root(env, cwd) == tmp_path
    assert server_root({"JPY_SESSION_NAME": "n.ipynb"}, cwd) == cwd
    assert server_path(cwd / "x.zip", env, cwd) == "a/b/x.zip"


def test_server_root_from_the_servers_runtime_file(tmp_path):
    # Jupyter Server 2.11+ gives the absolute notebook path; its runtime file has the root.
    runtime, root = tmp_path / "runtime", tmp_path / "served"
    runtime.mkdir()
    notebook = root / "deep" / "n.ipynb"
    env = {"JPY_SESSION_NAME": str(notebook), "JUPYTER_RUNTIME_DIR": str(runtime)}
    assert server_root(env, notebook.parent) is None
    assert server_path(root / "deep" / "x.zip", env, notebook.parent) == "x.zip"  # unknown
    info = {"root_dir": str(root), "pid": -1, "base_url": "/user/x/"}
    (runtime / "jpserver-1.json").write_text(json.dumps(info))
    (runtime / "jpserver-2.json").write_text(json.dumps({**info, "root_dir": "/elsewhere"}))
    assert server_root(env, notebook.parent) == root  # the one that holds the notebook
    parent = {**info, "root_dir": str(tmp_path), "pid": os.getppid()}
    (runtime / "jpserver-3.json").write_text(json.dumps(parent))
    assert server_root(env, notebook.parent) == tmp_path  # the server that started us
    assert server_path(root / "deep" / "x.zip", env) == "served/deep/x.zip"


def test_file_link_traits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JPY_SESSION_NAME", "n.ipynb")
    (tmp_path / "sub dir").mkdir()
    link = FileLink(tmp_path / "sub dir" / "m.mlpackage.zip", "get it")
    assert (link.path, link.local_path) == ("sub dir/m.mlpackage.zip",) * 2
    assert (link.filename, link.text) == ("m.mlpackage.zip", "get it")
    assert "jupyter-config-data" in link._esm and "download" in link._esm


# -- a long timeline ---------------------------------------------------------------------


@dataclass
class LongSession:
    """A session as the timeline sees it: records only, as the store caches them."""

    directory: Path
    checkpoints: list[Checkpoint]
    classes: list[str] = field(default_factory=lambda: ["a", "b"])
    session_parameters: mw.SessionParameters = field(default_factory=mw.SessionParameters)
    data_origin: str = ""
    damaged_checkpoints: dict[str, str] = field(default_factory=dict)

    def checkpoint_listing(self) -> tuple[list[Checkpoint], dict[str, str]]:
        return list(self.checkpoints), dict(self.damaged_checkpoints)


def long_history(directory: Path, n: int = 1000) -> list[Checkpoint]:
    model = {"architecture": "small_cnn", "classes": ["a", "b"], "image_size": 32}
    files = {"model.safetensors": {"sha256": "0" * 64, "size": 1}}
    found = []
    for i in range(n):
        phase = "extracting_features" if i < 2 else "training" if i < 900 else "fine_tuning"
        loss = 1 / (1 + i % 97)
        metrics = {"train_loss": loss, "valid_loss": loss, "valid_accuracy": 1 - loss / 2}
        # The matrix changes every 10 checkpoints: scrubbing redraws only then.
        confusion = None if phase == "extracting_features" else [[i // 10, 1], [2, 3]]
        found.append(Checkpoint(
            id=f"{i:06d}-{phase}", session_id="s", phase=phase, iteration=i, step_number=i,
            created_at=1.7e9 + i, metrics=metrics if i >= 2 else {},
            path=directory / f"{i:06d}-{phase}", files=files if i >= 2 else {},
            model=model if i >= 2 else {}, confusion=confusion))
    return found


def test_scrubbing_a_thousand_checkpoints_reads_nothing_and_redraws_only_changes(
        tmp_path, monkeypatch):
    session = LongSession(tmp_path, long_history(tmp_path))
    tl = CheckpointTimeline(session)
    assert tl.labels[0] == "features it 0" and tl.labels[950].startswith("fine-tune it 950 ·")
    assert tl.labels[96].endswith("★") and tl.best_index == 96  # lowest loss, first reached
    tl.select(0)
    redraws = []
    draw = timeline_module.confusion_heatmap
    monkeypatch.setattr(timeline_module, "confusion_heatmap",
                        lambda *a: (redraws.append(1), draw(*a)))

    def no_disk(*args, **kwargs):
        raise AssertionError("scrubbing touched the disk")

    for target, name in [(builtins, "open"), (io, "open"), (os, "open"), (os, "scandir"),
                         (os, "listdir"), (os, "stat"), (Path, "read_bytes"),
                         (Path, "read_text"), (Checkpoint, "load_model_state"),
                         (Checkpoint, "read_verified"), (Checkpoint, "from_directory")]:
        monkeypatch.setattr(target, name, no_disk)
    started = time.perf_counter()
    for i in range(1000):
        tl.slider.value = i
    seconds = time.perf_counter() - started
    monkeypatch.undo()
    assert tl.selected.id == session.checkpoints[-1].id
    assert len(redraws) == 100  # features -> first matrix, then a new matrix every 10
    assert heatmap_z(tl) == session.checkpoints[-1].confusion
    print(f"1,000 selections: {seconds * 1000:.0f} ms")
    assert seconds < 5, f"scrubbing 1,000 checkpoints took {seconds:.1f} s"


def test_labels_stay_unique_and_ordered_across_resumed_phases(tmp_path):
    def made(i, phase, iteration, step):
        return Checkpoint(id=f"{i:06d}-{phase}", session_id="s", phase=phase,
                          iteration=iteration, step_number=step, created_at=1.7e9 + i,
                          metrics={}, path=tmp_path / str(i), files={}, model={})
    # Iteration 2 trained twice (a failed run resumed from iteration 1), then fine-tuning.
    history = [made(0, "training", 1, 4), made(1, "training", 2, 8), made(2, "training", 2, 8),
               made(3, "training", 2, 16), made(4, "fine_tuning", 2, 24)]
    labels = timeline_module.unique_labels(history)
    assert labels == ["it 1", "it 2", "it 2 (step 8)", "it 2 (step 16)", "fine-tune it 2"]
    # The same step twice too (a pause and its replay): the place in time tells them apart.
    again = [made(5, "training", 2, 8), made(6, "training", 2, 8)]
    labels = timeline_module.unique_labels([*history[:2], *again])
    assert labels == ["it 1", "it 2", "it 2 (step 8)", "it 2 (step 8) (#4)"]
    # The panels that use a checkpoint name its place in the timeline's words.
    from types import SimpleNamespace

    from mlwidgets.ui.common import using_checkpoint

    assert "Using checkpoint: fine-tune iteration 2, best" in using_checkpoint(
        SimpleNamespace(checkpoint=history[4]), best=True)
    paused = dataclasses.replace(made(7, "training", 2, 11), partial=True)
    assert timeline_module.unique_labels([paused]) == ["paused at step 11"]
    assert "Using checkpoint: paused at step 11<" in using_checkpoint(
        SimpleNamespace(checkpoint=paused))


def test_a_damaged_checkpoint_is_listed_as_damaged_and_the_others_stay_usable(trained_copy):
    record = sorted(Path(trained_copy, "checkpoints").glob("*/checkpoint.json"))[0]
    changed = record.read_bytes().replace(b'"phase": "training"', b'"phase": "fine_tuning"')
    record.write_bytes(changed)  # one word: its digest no longer matches
    timeline = CheckpointTimeline(mw.TrainingSession.restore(trained_copy))
    assert "Damaged, left out: checkpoint " + record.parent.name in timeline.damaged.value
    assert len(timeline.checkpoints) == 2
    assert timeline.restore().classes == timeline.session.classes
    timeline.close()
