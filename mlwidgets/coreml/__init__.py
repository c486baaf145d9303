"""Core ML export of image classifiers, and verification of the exported files.

coremltools is imported only inside the functions that convert or read models.
Note: `export` and `verify` here are the functions; their modules are reached with
`importlib.import_module("mlwidgets.coreml.export")` (or `.verify`).
"""

from __future__ import annotations

from .archive import zip_for_download
from .export import CONVERTIBLE_ARCHITECTURES, ExportError, ExportResult, export
from .metadata import ModelMetadata, exports_of
from .verify import UnsupportedOperation, VerificationError, VerificationReport, verify

__all__ = ["CONVERTIBLE_ARCHITECTURES", "ExportError", "ExportResult", "ModelMetadata",
           "UnsupportedOperation", "VerificationError", "VerificationReport", "export",
           "exports_of", "verify", "zip_for_download"]
