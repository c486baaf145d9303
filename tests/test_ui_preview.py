"""DatasetPreview driven headless: through its public methods and its buttons' click()."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import mlwidgets as mw
from mlwidgets.ui import common
from mlwidgets.ui.preview import DatasetPreview


def chart_counts(preview: DatasetPreview) -> dict[str, dict[str, int]]:
    """{trace name: {class: bar height}} as the chart shows it."""
    return {trace.name: dict(zip(trace.x, trace.y)) for trace in preview.chart.data}


def shapes_folder(root: Path, images_per_class: int, classes: tuple[str, ...]) -> Path:
    data = mw.datasets.shapes(root, images_per_class=images_per_class, image_size=32,
                              classes=classes)
    return Path(data.origin)


def card_text(preview: DatasetPreview) -> list[str]:
    return [card.children[1].value for card in preview.grid.children]


def test_summary_and_bar_chart_count_every_image(tiny_data: mw.DataSource) -> None:
    preview = DatasetPreview(tiny_data)

    assert "48 images in 3 classes" in preview.summary.value
    bars = chart_counts(preview)
    assert set(bars) == {"training", "validation"}  # the automatic split a session would make
    expected = tiny_data.summary()["images"].to_dict()
    assert {c: bars["training"][c] + bars["validation"][c] for c in expected} == expected
    n_train, n_valid = sum(bars["training"].values()), sum(bars["validation"].values())
    assert f"{n_train} training, {n_valid} validation" in preview.summary.value


def test_a_session_shows_its_own_split(trained_dir: Path) -> None:
    session = mw.TrainingSession.restore(trained_dir)
    preview = DatasetPreview(session)

    train, valid = session.split
    bars = chart_counts(preview)
    assert bars["training"] == dict(Counter(i.label for i in train))
    assert bars["validation"] == dict(Counter(i.label for i in valid))
    assert f"{len(train)} training, {len(valid)} validation" in preview.summary.value
    shown_validation = [p for p in preview.thumbnails_shown if p in {i.path for i in valid}]
    assert sum("validation" in text for text in card_text(preview)) == len(shown_validation)


def test_next_and_previous_buttons_page_through_one_class(tiny_data: mw.DataSource) -> None:
    preview = DatasetPreview(tiny_data, page_size=12)
    first_page = preview.thumbnails_shown

    assert preview.class_name == "circle" and preview.page_count == 2
    assert preview.page_label.value == "page 1 of 2"
    assert len(first_page) == 12 and all(p.parent.name == "circle" for p in first_page)
    assert preview.previous_button.disabled

    preview.next_button.click()
    second_page = preview.thumbnails_shown
    assert preview.page == 1 and preview.page_label.value == "page 2 of 2"
    assert len(second_page) == 4 and not set(first_page) & set(second_page)
    assert [p.name in text for p, text in zip(second_page, card_text(preview))] == [True] * 4
    assert preview.next_button.disabled

    preview.next_button.click()  # at the last page: stays there
    assert preview.thumbnails_shown == second_page

    preview.previous_button.click()
    assert preview.thumbnails_shown == first_page


def test_choosing_a_class_shows_its_first_page(tiny_data: mw.DataSource) -> None:
    preview = DatasetPreview(tiny_data)
    preview.next_page()

    preview.class_picker.value = "square"  # what the user does in the dropdown
    assert preview.class_name == "square" and preview.page == 0
    assert {p.parent.name for p in preview.thumbnails_shown} == {"square"}

    preview.show_class("triangle")
    assert preview.class_picker.value == "triangle"
    assert {p.parent.name for p in preview.thumbnails_shown} == {"triangle"}

    with pytest.raises(ValueError, match="no class 'dog'"):
        preview.show_class("dog")
    assert "no class" in preview.status.value


def test_thumbnails_are_made_one_page_at_a_time(tiny_data: mw.DataSource,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = common.thumbnail_png
    monkeypatch.setattr(common, "thumbnail_png",
                        lambda source, size=96: made.append(source) or real(source, size))

    preview = DatasetPreview(tiny_data, page_size=5)
    assert sorted(made) == sorted(preview.thumbnails_shown)  # 5 of 48, not all of them

    preview.next_page()
    assert len(made) == 10
    preview.previous_page()  # seen before: not made again
    assert len(made) == 10


def test_skipped_files_are_listed_with_their_reasons(tmp_path: Path,
                                                     tiny_data: mw.DataSource) -> None:
    assert "No files were skipped." in DatasetPreview(tiny_data).skipped.value

    folder = shapes_folder(tmp_path, 3, ("circle", "square"))
    (folder / "circle" / "broken.png").write_bytes(b"not a picture")
    (folder / "square" / "empty.jpg").write_bytes(b"")
    data = mw.DataSource.labeled_directories(folder)
    preview = DatasetPreview(data)

    for path, reason in data.skipped:
        assert path.name in preview.skipped.value
        assert common.escape(reason) in preview.skipped.value
    assert "2 files skipped" in preview.summary.value
    assert sum(chart_counts(preview)["training"].values()) + sum(
        chart_counts(preview)["validation"].values()) == 6


def test_set_source_replaces_everything(tiny_data: mw.DataSource, tmp_path: Path) -> None:
    preview = DatasetPreview(tiny_data)
    preview.next_page()
    folder = shapes_folder(tmp_path, 2, ("circle", "square"))
    other = mw.DataSource.labeled_directories(folder)

    preview.set_source(other)
    assert list(preview.class_picker.options) == ["circle", "square"]
    assert preview.class_picker.value == preview.class_name == "circle"
    assert preview.page == 0 and preview.page_count == 1
    assert all(folder in p.parents for p in preview.thumbnails_shown)
    assert "4 images in 2 classes" in preview.summary.value
