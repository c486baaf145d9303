"""Export, then verify, then report: the one sequence the CLI, the demo and the Studio run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .export import ExportResult, size_of
from .verify import VerificationError, VerificationReport, verify

if TYPE_CHECKING:
    from .metadata import ModelMetadata


@dataclass(frozen=True)
class ExportReport:
    """What was written, and how it compares with the PyTorch model it came from."""

    result: ExportResult
    verification: VerificationReport | None = None
    not_verified: str | None = None  # why there is no verification

    @property
    def agrees(self) -> bool:
        """True when every verification image got the same top label."""
        return self.verification is not None and self.verification.top1_agreement == 1.0

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) rows: the file, its size, its format, and the verification."""
        r = self.result
        kind = "ML program" if r.format == "mlprogram" else "neural network"
        weights = r.precision + (f", {r.quantize}" if r.quantize else "")
        size = size_of(r.path)
        rows = [("file", str(r.path)), ("size", f"{human_size(size)} ({size:,} bytes)"),
                ("format", f"{kind} ({r.path.suffix}), {weights} weights, {r.seconds:.1f} s")]
        if self.verification is not None:
            rows.append(("verified", self.verification.summary()))
        elif self.not_verified:
            rows.append(("not verified", self.not_verified))
        return rows


def export_and_verify(classifier: Any, path: str | os.PathLike,
                      images: Sequence[Any] = (), metadata: ModelMetadata | None = None,
                      **options: Any) -> ExportReport:
    """Write `classifier` to `path` (`options` as `ImageClassifier.write` takes them), then
    check the file against the PyTorch model on `images`. A model that was written but
    could not be checked is reported as such, not raised: the file is good to keep."""
    result = classifier.write(path, metadata, **options)
    if not images:
        return ExportReport(result, not_verified="no images to compare on")
    try:
        return ExportReport(result, verify(result.path, classifier, list(images)))
    except (VerificationError, OSError) as e:
        return ExportReport(result, not_verified=f"the check could not run: {e}")


def human_size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"
