"""The formats of a session's side files, checked on reading as schemas.py checks the core
ones (same limits, field types and errors): the extracted-features cache, export records,
cached predictions, data-problem decisions, the batch-loss line, and control.json (a
pause or stop request for the trainer).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict

from .errors import MlwidgetsError, SessionError
from .schemas import (
    MAX_STEPS,
    PHASES,
    Classes,
    Count,
    FileRecord,
    Iteration,
    Json,
    Label,
    Sha256,
    Step,
    Text,
    Time,
    decode_record,
    validated,
)

# -- control.json (a pause or stop request for the trainer) -------------------------------

MAX_CONTROL_BYTES = 4096


@with_config(ConfigDict(extra="allow"))
class ControlRecord(TypedDict):
    action: Literal["pause", "stop"]
    at_step: NotRequired[Step | None]
    time: NotRequired[Time]


_control_record = TypeAdapter(ControlRecord)


def control_from_bytes(data: bytes) -> dict[str, Any] | None:
    """control.json's request, or None when it holds none that is valid (a request is
    advisory: a damaged one is ignored, never an error)."""
    try:
        return _control_record.validate_python(decode_record(data, "control.json"))
    except (MlwidgetsError, ValidationError):
        return None


# -- features/<key>/features.json (the extracted-features cache) -------------------------


@with_config(ConfigDict(extra="forbid"))
class FeaturesRecord(TypedDict):
    key: Annotated[dict[Annotated[str, Field(max_length=64)], Json], Field(max_length=64)]
    files: Annotated[dict[Literal["features.safetensors", "body.safetensors"], FileRecord],
                     Field(min_length=2)]


_features_record = TypeAdapter(FeaturesRecord)


def load_features_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                         ) -> dict[str, Any]:
    """A features cache's record from its bytes: its key and its two files' hashes."""
    return validated(_features_record, decode_record(data, where, error), where, error)


# -- exports/*.json ------------------------------------------------------------------------


@with_config(ConfigDict(extra="allow"))
class ExportRecord(TypedDict):
    kind: Annotated[str, Field(max_length=64)]
    path: Text
    format: Literal["mlprogram", "neuralnetwork"]
    size_bytes: Count
    precision: Annotated[str, Field(max_length=32)]
    quantize: Annotated[str, Field(max_length=32)] | None
    sha256: Sha256
    sha256_of: Annotated[str, Field(max_length=256)]
    session_id: Label
    checkpoint_id: Label
    iteration: Iteration
    step_number: Count
    created_at: Time
    date: Annotated[str, Field(max_length=64)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=1 << 16)]]


_export_record = TypeAdapter(ExportRecord)


def load_export_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                       ) -> dict[str, Any]:
    """One exports/*.json record from its bytes."""
    return validated(_export_record, decode_record(data, where, error), where, error)


# -- predictions/<checkpoint id>/predictions.json (a checkpoint's cached predictions) -----

PREDICTIONS_FORMAT = "mlwidgets.predictions/1"
MAX_IMAGES = 10**7  # images in one split


@with_config(ConfigDict(extra="forbid"))
class PredictionsRecord(TypedDict):
    format: Literal["mlwidgets.predictions/1"]
    checkpoint: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
    model_sha256: Sha256  # the checkpoint's model file: another checkpoint of that name is stale
    items_sha256: Sha256  # the validation images and labels the rows stand for
    classes: Classes
    images: Annotated[int, Field(ge=0, le=MAX_IMAGES)]
    source: Literal["features", "images"]
    files: Annotated[dict[Literal["probabilities.safetensors"], FileRecord], Field(min_length=1)]


_predictions_record = TypeAdapter(PredictionsRecord)


def load_predictions_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                            ) -> dict[str, Any]:
    """A checkpoint's cached-predictions record from its bytes."""
    return validated(_predictions_record, decode_record(data, where, error), where, error)


# -- decisions.json (keep / relabel / exclude, decided on possible data problems) -------

DECISIONS_FORMAT = "mlwidgets.decisions/1"
MAX_DECISIONS = 10**6
MAX_DECISIONS_BYTES = 256 << 20


@with_config(ConfigDict(extra="forbid"))
class Decision(TypedDict):
    action: Literal["keep", "relabel", "exclude"]
    label: NotRequired[Label]  # the new label, for "relabel"
    time: NotRequired[Time]


def _relabel_has_label(decisions: dict[str, Any]) -> dict[str, Any]:
    for path, decision in decisions.items():
        if not path or "\x00" in path:
            raise ValueError("an empty or invalid path")
        if (decision["action"] == "relabel") != ("label" in decision):
            raise ValueError(f"{path[:80]!r}: a label goes with relabel, and only with it")
    return decisions


@with_config(ConfigDict(extra="forbid"))
class DecisionsRecord(TypedDict):
    format: Literal["mlwidgets.decisions/1"]
    decisions: Annotated[dict[Text, Decision], Field(max_length=MAX_DECISIONS),
                         AfterValidator(_relabel_has_label)]


_decisions_record = TypeAdapter(DecisionsRecord)


def load_decisions_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                          ) -> dict[str, Any]:
    """decisions.json from its bytes: one decision per image path."""
    return validated(_decisions_record, decode_record(data, where, error), where, error)


# -- batch_losses.json (per-batch training losses, thinned: see batch_losses.py) ----------

BATCH_LOSSES_FORMAT = "mlwidgets.batch_losses/1"
MAX_LOSS_POINTS = 2000  # per phase: neighbouring points merge in pairs beyond it
MAX_BATCH_LOSSES_BYTES = 8 << 20
Loss = Annotated[float, Field(allow_inf_nan=False)]
LossPoint = tuple[Annotated[float, Field(ge=0, le=MAX_STEPS, allow_inf_nan=False)], Loss]


@with_config(ConfigDict(extra="forbid"))
class PhaseLosses(TypedDict):
    stride: Annotated[int, Field(ge=1, le=MAX_STEPS)]  # batches averaged into each point
    points: Annotated[list[LossPoint], Field(max_length=MAX_LOSS_POINTS + 1)]


@with_config(ConfigDict(extra="forbid"))
class BatchLossesRecord(TypedDict):
    format: Literal["mlwidgets.batch_losses/1"]
    max_points_per_phase: Annotated[int, Field(ge=2, le=MAX_LOSS_POINTS)]
    phases: dict[Literal[PHASES], PhaseLosses]  # type: ignore[valid-type]


_batch_losses_record = TypeAdapter(BatchLossesRecord)


def load_batch_losses_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                             ) -> dict[str, Any]:
    """batch_losses.json from its bytes: each phase's thinned [step, loss] points."""
    return validated(_batch_losses_record, decode_record(data, where, error), where, error)
