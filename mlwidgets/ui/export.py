"""The Core ML export form: metadata, precision and compression, one button, a download link.

The form gets its classifier from a callable, so weights load only when the user exports.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..coreml.archive import download_archive_path, zip_for_download
from ..coreml.export import PRECISIONS, QUANTIZATIONS, size_of
from ..coreml.report import ExportReport, human_size
from .common import CHOICE_CLASS, button, message, reports_errors, theme_style
from .filelink import FileLink

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint
    from ..classifier import ImageClassifier
    from ..coreml import ExportResult, VerificationReport
    from ..session import TrainingSession

# The form offers the compressions worth a newcomer's click (palettize-4 loses too much).
COMPRESSIONS = ("none", *(q for q in QUANTIZATIONS if q in ("int8", "palettize-6")))
VERIFICATION_IMAGES = 50
_FIELDS = ("author", "license", "short_description", "version", "precision", "compression")


class ExportForm(widgets.VBox):
    """Writes the classifier `provide_classifier()` returns to Core ML and verifies it.

    `session` gives the default file name (in `<session>/exports/`) and the validation images
    the export is checked on; without one, pass `images` (or nothing: no verification).
    """

    def __init__(self, provide_classifier: Callable[[], ImageClassifier] | ImageClassifier,
                 session: TrainingSession | None = None, checkpoint: Checkpoint | None = None,
                 images: Sequence[Any] | None = None):
        if callable(provide_classifier):
            self.provide_classifier = provide_classifier
        else:
            classifier = provide_classifier
            self.provide_classifier = lambda: classifier
            checkpoint = checkpoint or classifier.checkpoint
        self.session = session
        self.checkpoint = checkpoint
        self.images = images
        self.result: ExportResult | None = None
        self.report: VerificationReport | None = None
        self.link: FileLink | None = None
        # Read once: for_checkpoint runs on every timeline scrub and must not touch the disk.
        self._stem = _dataset_name(session)
        self._default = str(self.default_path())
        style = {"description_width": "90px"}
        wide = widgets.Layout(width="95%")
        self.file_name = widgets.Text(self._default, description="File", layout=wide, style=style,
                                      tooltip="Xcode names the model's Swift class after the "
                                      "file: Shapes.mlpackage becomes the class Shapes")
        self.author = widgets.Text(description="Author", placeholder="your name", style=style)
        self.license = widgets.Text(description="License", placeholder="e.g. CC-BY-4.0",
                                    style=style)
        self.short_description = widgets.Text(description="Description", layout=wide, style=style,
                                              placeholder="default: the classes it predicts")
        self.version = widgets.Text("1.0", description="Version", style=style)
        self.compression = widgets.Dropdown(options=COMPRESSIONS, description="Compression",
                                            style=style)
        self.precision = widgets.ToggleButtons(options=PRECISIONS,
                                               style={"button_width": "80px"},
                                               tooltips=["full size", "half the size"])
        self.precision.add_class(CHOICE_CLASS)  # the chosen one stands out (THEME_CSS)
        # A toggle's own description sits above its buttons: a label in the fields' column.
        precision_label = widgets.Label("Precision", layout=widgets.Layout(
            width="90px", margin="0 4px 0 0", display="flex", justify_content="flex-end"))
        self.export_button = button("Export to Core ML", self.export, icon="download",
                                    style="primary",
                                    tooltip="write, verify and link a Core ML model")
        self.export_button.layout.width = "auto"
        self.status = widgets.HTML()
        self.download = widgets.Box(layout=widgets.Layout(margin="0 0 0 12px"))
        super().__init__([
            self.file_name, widgets.HBox([self.author, self.license]), self.short_description,
            widgets.HBox([self.version, self.compression]),
            widgets.HBox([precision_label, self.precision]), theme_style(),
            widgets.HBox([self.export_button, self.download],
                         layout=widgets.Layout(align_items="center")),
            self.status,
        ])

    def default_path(self) -> Path:
        """`<session>/exports/Shapes.mlpackage`: Xcode makes the file name the model's Swift
        class, so a class-like name from the data folder; `Shapes2`, `Shapes3`… once taken."""
        folder = self.session.directory / "exports" if self.session else Path()
        for n in range(1, 10_000):
            path = folder / f"{self._stem}{n if n > 1 else ''}.mlpackage"
            if not any(p.exists() or p.is_symlink() for p in (path, download_archive_path(path))):
                return path
        return path

    def for_checkpoint(self, checkpoint: Checkpoint | None) -> None:
        """Export `checkpoint` next (the file name stays: it names a class, not a checkpoint)."""
        self.checkpoint = checkpoint

    @reports_errors()
    def export(self, path: str | os.PathLike | None = None, **fields: Any) -> ExportResult:
        """Write, verify and link a Core ML model; `fields` set the form's fields first.

        Fields: author, license, short_description, version, precision ("float32" or
        "float16"), compression ("none", "int8" or "palettize-6").
        """
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise TypeError(f"unknown export fields {unknown}; known: {', '.join(_FIELDS)}")
        if path is not None:
            self.file_name.value = str(path)
        for name, value in fields.items():
            field = getattr(self, name)
            value = "none" if value is None else value
            if hasattr(field, "options") and value not in field.options:
                raise ValueError(f"{name} must be one of {', '.join(field.options)}, "
                                 f"got {value!r}")
            field.value = value
        target = self._target()
        self.result, self.report, self.link = None, None, None
        self.download.children = ()
        self.status.value = message(f"Exporting {target}…")
        self.export_button.disabled = True  # one export at a time
        try:
            return self._write(target)
        finally:
            self.export_button.disabled = False

    def _write(self, target: Path) -> ExportResult:
        from ..coreml import ExportError, ModelMetadata
        from ..coreml.report import export_and_verify

        metadata = ModelMetadata(author=self.author.value, license=self.license.value,
                                 short_description=self.short_description.value,
                                 version=self.version.value)
        quantize = None if self.compression.value == "none" else self.compression.value
        try:
            report = export_and_verify(self.provide_classifier(), target,
                                       self._verification_images(), metadata,
                                       precision=self.precision.value, quantize=quantize)
        except ExportError as e:  # name the file: the engine's message names the step
            raise ExportError(f"{target}: {e}") from e
        self.result, self.report = report.result, report.verification
        path = report.result.path
        download = zip_for_download(path) if path.is_dir() else path
        size = human_size(size_of(download))
        self.link = FileLink(download, f"Download {download.name} ({size})")
        self.download.children = (self.link,)
        self.status.value = self._summary(report)
        if self.file_name.value == self._default:  # the next export gets the next free name
            self._default = str(self.default_path())
            self.file_name.value = self._default
        return report.result

    def _target(self) -> Path:
        """The file to write; refuses, before any slow work, names that would fail or clobber."""
        from ..coreml.export import FORMATS

        name = self.file_name.value.strip()
        if not name:
            raise ValueError("enter a file name ending in .mlpackage or .mlmodel")
        target = Path(name).expanduser()
        if target.suffix not in FORMATS:
            raise ValueError(f"{target}: a Core ML model's name ends in .mlpackage (ML program) "
                             "or .mlmodel (neural network)")
        for taken in (target, download_archive_path(target)):
            if taken.exists() or taken.is_symlink():
                raise FileExistsError(f"{taken} already exists; choose another file name")
        return target

    def _summary(self, report: ExportReport) -> str:
        """The status after writing: size, and the verification on validation images."""
        result = report.result
        wrote = (f"Wrote {result.path} · {human_size(size_of(result.path))} · {result.precision}"
                 f"{' · ' + result.quantize if result.quantize else ''} · {result.seconds:.1f} s")
        if report.verification is None:
            return message(f"{wrote}\nNot verified: {report.not_verified}.",
                           "success" if report.not_verified.startswith("no images") else "error")
        # Compressed weights may flip a close call: worth a look, not an alarm.
        v = report.verification
        checked = (f"Verified against PyTorch: {v.n_images} images · top-1 agreement "
                   f"{v.top1_agreement:.1%} · largest probability difference "
                   f"{v.max_abs_diff:.1e} · {_BACKEND_WORDS.get(v.backend, v.backend)}")
        return (message(wrote, "success")
                + f"<div title='verification backend: {v.backend}'>"
                + message(checked, "success" if report.agrees else "info") + "</div>")

    def _verification_images(self) -> list[Any]:
        if self.images is not None:
            return list(self.images)[:VERIFICATION_IMAGES]
        if self.session is None:
            return []
        return self.session.verification_images(VERIFICATION_IMAGES)


# How the exported model was run, in words (the backend's name stays in the tooltip).
_BACKEND_WORDS = {"coreml": "run by Core ML",
                  "numpy-reference": "run by a NumPy copy of the model (Core ML itself runs "
                                     "only on Apple systems)"}


def _dataset_name(session: TrainingSession | None) -> str:
    """A Swift class name from the data folder's name for labelled directories, else the
    session folder's name: `shapes` -> `Shapes`, `my-images` -> `MyImages`."""
    if session is None:
        return "Model"
    origin = session.data_origin
    name = Path(origin).name if origin and Path(origin).is_dir() else session.directory.name
    # A cache folder's content hash (shapes-78fd9d3b3e6e) is no part of a class name.
    return swift_class_name(re.sub(r"[-_][0-9a-f]{8,}$", "", name))


def swift_class_name(text: str) -> str:
    """`text` as a valid, class-like Swift identifier (ASCII letters and digits, capitalized
    words, never starting with a digit): what Xcode would otherwise derive from the name."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return f"Model{name}" if name[0].isdigit() else name


