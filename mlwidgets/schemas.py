"""The session's file formats: what each file may hold, checked on reading (the side files,
from the features cache to control.json, are in side_schemas.py on the same terms).

Nothing in a session folder is trusted (see README, "Opening a session someone sent you").
Every record is parsed here with bounded depth and no NaN or infinity, then validated with
pydantic `TypeAdapter`s over the engine's own types (`ModelParameters`,
`SessionParameters`) and the TypedDicts below: types, required keys, ranges. A record that
fails raises the error class its caller passes (CheckpointError, SessionError...), naming the
file and the first bad field; one bad record never affects another.

Records written by `encode_record` end with a `"digest"`: the sha256 of the file's own bytes
(with the digest spelled as zeros), so any changed byte is detected. Records without one
(written by older versions) are still read, with every field checked.

Limits, each checked before anything is allocated from the value:
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import NotRequired, TypedDict

from .errors import MlwidgetsError, SessionError, SessionNotFoundError
from .events import RunState
from .jsonfiles import (  # noqa: F401  (encode_record too: formats are looked up here)
    DIGEST_KEY,
    MAX_DEPTH,
    decode_record,
    encode_record,
    parse_json,
)
from .parameters import CLASSIFIERS, ModelParameters, SessionParameters, stored_markers

# -- documented limits ---------------------------------------------------------------------

MAX_IMAGE_SIZE = 1024  # the model's input side, pixels
MAX_ASPECT_RATIO = 100  # of an image file, long side over short side
MAX_ITERATIONS = 10**6  # (MAX_DEPTH, the nesting of any JSON value, is in jsonfiles.py)
MAX_CLASSES = 10_000
MAX_BATCH_SIZE = 65_536
MAX_LABEL_CHARS = 255
MAX_PATH_CHARS = 4096
MAX_STEPS = 10**12
MAX_TIME = 1e11  # seconds since 1970 (year 5138): a time stamp beyond is damage
MAX_PARAM_TENSORS = 100_000  # optimizer records: parameter tensors of one network
MAX_CHECKPOINT_RECORD_BYTES = 64 << 20  # checkpoint.json (confusion of many classes)
MAX_SESSION_RECORD_BYTES = 16 << 20  # session.json, an export record
MAX_DATA_RECORD_BYTES = 512 << 20  # data.json: paths of up to millions of images
MAX_EVENT_LINE_BYTES = 1 << 20  # one line of events.jsonl
MAX_TENSOR_FILE_BYTES = 8 << 30  # one .safetensors file of a checkpoint

__doc__ += f"""
image size <= {MAX_IMAGE_SIZE} px; aspect ratio <= {MAX_ASPECT_RATIO}; decoded pixels within
PIL's `Image.MAX_IMAGE_PIXELS`; iterations <= {MAX_ITERATIONS:,}; classes <= {MAX_CLASSES:,};
JSON nesting <= {MAX_DEPTH}; checkpoint.json <= {MAX_CHECKPOINT_RECORD_BYTES >> 20} MiB;
session.json <= {MAX_SESSION_RECORD_BYTES >> 20} MiB; data.json <= {MAX_DATA_RECORD_BYTES >> 20}
MiB; an events.jsonl line <= {MAX_EVENT_LINE_BYTES >> 20} MiB; a tensor file <=
{MAX_TENSOR_FILE_BYTES >> 30} GiB; tensors must match the shapes of the recorded architecture.
"""

PHASES = ("initialized", "extracting_features", "training", "fine_tuning", "evaluating", "done")
# Every RunState, "pausing" included (a stored state; "interrupted" is only ever computed,
# but older versions did not say so).
STATES = tuple(state.value for state in RunState)
CHECKPOINT_FORMAT = "mlwidgets.checkpoint/1"
SESSION_FORMAT = "mlwidgets.session/1"
# A file name inside a checkpoint: one plain component, never hidden, never a path.
FILE_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")

# -- shared field types ----------------------------------------------------------------------

Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
Text = Annotated[str, Field(max_length=MAX_PATH_CHARS)]
Count = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Iteration = Annotated[int, Field(ge=0, le=MAX_ITERATIONS)]
Time = Annotated[float, Field(ge=0, le=MAX_TIME, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Metric = Annotated[float, Field(allow_inf_nan=False)] | None
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Json = Any  # parse_json already bounded its depth and numbers


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("names repeat")
    return values


Classes = Annotated[list[Label], Field(min_length=1, max_length=MAX_CLASSES),
                    AfterValidator(_unique)]


def _known_fields(cls: type) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}

    def check(value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - names)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))[:200]}")
        return value
    return check


def _bounded_parameters(p: ModelParameters) -> ModelParameters:
    if p.image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size {p.image_size} is above {MAX_IMAGE_SIZE}")
    for name in ("max_iterations", "fine_tune_iterations"):
        if getattr(p, name) > MAX_ITERATIONS:
            raise ValueError(f"{name} {getattr(p, name)} is above {MAX_ITERATIONS}")
    if p.batch_size > MAX_BATCH_SIZE or p.feature_views > 64:
        raise ValueError("batch_size or feature_views is out of range")
    if len(p.mlp_layers) > 8 or any(n > MAX_BATCH_SIZE for n in p.mlp_layers):
        raise ValueError("mlp_layers is out of range")
    if not math.isfinite(p.learning_rate) or p.learning_rate > 10:
        raise ValueError(f"learning_rate {p.learning_rate} is out of range")
    v = p.validation
    if not (isinstance(v, str) or (isinstance(v, float) and 0 < v < 1)):
        raise ValueError("validation must be a mode or a fraction")
    if p.weights_file is not None and len(p.weights_file) > MAX_PATH_CHARS:
        raise ValueError("weights_file is too long")
    return p


def _bounded_session_parameters(p: SessionParameters) -> SessionParameters:
    for name in ("report_interval", "checkpoint_interval", "iterations", "keep_last",
                 "keep_best"):
        value = getattr(p, name)
        if value is not None and value > MAX_ITERATIONS:
            raise ValueError(f"{name} {value} is above {MAX_ITERATIONS}")
    if p.image_cache_mb is not None and not math.isfinite(p.image_cache_mb):
        raise ValueError("image_cache_mb is out of range")
    return p


def _stored_before_extractors(value: Any) -> Any:
    """A record written before `feature_extractor` existed had none: keep that meaning."""
    if isinstance(value, dict) and "feature_extractor" not in value:
        return {"feature_extractor": None, **value}
    return value


Parameters = Annotated[ModelParameters, BeforeValidator(stored_markers),
                       BeforeValidator(_stored_before_extractors),
                       BeforeValidator(_known_fields(ModelParameters)),
                       AfterValidator(_bounded_parameters)]
SessionParams = Annotated[SessionParameters, BeforeValidator(_known_fields(SessionParameters)),
                          AfterValidator(_bounded_session_parameters)]

# -- checkpoint.json -----------------------------------------------------------------------


NetworkName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]


@with_config(ConfigDict(extra="forbid"))
class FileRecord(TypedDict):
    sha256: Sha256
    size: Annotated[int, Field(ge=0, le=MAX_TENSOR_FILE_BYTES)]


@with_config(ConfigDict(extra="forbid"))
class ModelRecord(TypedDict, total=False):
    # An engine architecture, or the feature extractor's network (any timm model name).
    architecture: NetworkName
    feature_extractor: NetworkName
    classes: Classes
    image_size: Annotated[int, Field(ge=16, le=MAX_IMAGE_SIZE)]
    mean: Annotated[list[Number], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]],
                   Field(min_length=3, max_length=3)]
    classifier: Literal[CLASSIFIERS]  # type: ignore[valid-type]
    mlp_layers: Annotated[list[Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]],
                          Field(max_length=8)]


def _scalar_keys(scalars: dict[str, Any]) -> dict[str, Any]:
    for key in scalars:
        if not key.isdigit() or int(key) >= MAX_PARAM_TENSORS:
            raise ValueError(f"parameter index {key[:20]!r} is not a small number")
    return scalars


@with_config(ConfigDict(extra="forbid"))
class OptimizerRecord(TypedDict, total=False):
    n_params: Annotated[int, Field(ge=0, le=MAX_PARAM_TENSORS)]
    scalars: Annotated[dict[str, dict[Annotated[str, Field(max_length=64)], Json]],
                       AfterValidator(_scalar_keys)]
    hypers: Annotated[list[dict[Annotated[str, Field(max_length=64)], Json]],
                      Field(max_length=1000)]


def _file_names(files: dict[str, Any]) -> dict[str, Any]:
    for name in files:
        if not FILE_NAME.match(name) or name == "checkpoint.json":
            raise ValueError(f"{name[:80]!r} is not a plain file name")
    return files


def _square(confusion: list[list[int]] | None) -> list[list[int]] | None:
    if confusion is not None and any(len(row) != len(confusion) for row in confusion):
        raise ValueError("the confusion matrix is not square")
    return confusion


@with_config(ConfigDict(extra="allow"))  # resume.py may record more; it is kept
class ResumeRecord(TypedDict, total=False):
    """Where a pause inside an iteration stopped (see resume.py): bounded numbers."""

    version: Annotated[int, Field(ge=0, le=1000)]
    iteration: Iteration
    batch: Annotated[int, Field(ge=0, le=MAX_STEPS)]
    batches: Annotated[int, Field(ge=0, le=MAX_STEPS)]
    totals: Annotated[dict[Annotated[str, Field(max_length=64)], int | Number],
                      Field(max_length=64)]
    # Data-parallel runs: each worker's share of the totals, in rank order.
    rank_totals: Annotated[list[Annotated[dict[Annotated[str, Field(max_length=64)],
                                               int | Number], Field(max_length=64)]],
                           Field(max_length=256)]
    rng: Annotated[dict[Annotated[str, Field(max_length=64)], Json], Field(max_length=64)]


@with_config(ConfigDict(extra="forbid"))
class CheckpointRecord(TypedDict):
    format: Literal["mlwidgets.checkpoint/1"]
    session_id: Label
    phase: Literal[PHASES]  # type: ignore[valid-type]
    iteration: Iteration
    step_number: Count
    created_at: Time
    metrics: Annotated[dict[Annotated[str, Field(max_length=64)], Metric], Field(max_length=64)]
    files: Annotated[dict[str, FileRecord], Field(max_length=64), AfterValidator(_file_names)]
    model: NotRequired[ModelRecord]
    optimizer: NotRequired[OptimizerRecord]
    confusion: NotRequired[Annotated[
        list[Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_CLASSES)]],
        Field(max_length=MAX_CLASSES), AfterValidator(_square)] | None]
    # Pause checkpoints: where inside an iteration training stopped (batch, RNG states,
    # data order, partial totals), so resuming continues exactly; any bounded JSON.
    resume: NotRequired[ResumeRecord | None]
    partial: NotRequired[bool]


_checkpoint_record = TypeAdapter(CheckpointRecord)


def load_checkpoint_record(data: bytes, where: Any, error: type[MlwidgetsError]
                           ) -> dict[str, Any]:
    """checkpoint.json's record from its bytes: digest, shape and ranges checked."""
    record = decode_record(data, where, error)
    record = validated(_checkpoint_record, record, where, error)
    model = record.get("model") or {}
    confusion = record.get("confusion")
    if confusion is not None and "classes" in model and len(confusion) != len(model["classes"]):
        raise error("its confusion matrix does not match its classes", where,
                    "the file is damaged")
    return record


def validated(adapter: TypeAdapter, value: Any, where: Any,
               error: type[MlwidgetsError]) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as e:
        raise error(_first_problem(e), where, "the file is damaged") from None


def _first_problem(e: ValidationError) -> str:
    first = e.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"])[:120]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{field or 'the record'}: {message}{more}"


# -- session.json --------------------------------------------------------------------------


@with_config(ConfigDict(extra="allow"))
class DataSummary(TypedDict, total=False):
    origin: Text
    fingerprint: Annotated[str, Field(max_length=128)]
    train: Count
    valid: Count
    skipped: Count
    roots: Annotated[list[Text], Field(max_length=1024)]  # folders the images came from


@with_config(ConfigDict(extra="allow"))  # later versions add fields; they are kept, unread
class SessionRecord(TypedDict):
    format: Literal["mlwidgets.session/1"]
    id: Label
    created_at: Time
    parameters: Parameters
    session_parameters: SessionParams
    classes: Classes
    data: NotRequired[DataSummary]
    versions: NotRequired[dict[Annotated[str, Field(max_length=64)],
                               Annotated[str, Field(max_length=256)]]]
    state: Literal[STATES]  # type: ignore[valid-type]
    elapsed: NotRequired[Annotated[float, Field(ge=0, le=MAX_TIME, allow_inf_nan=False)]]
    pid: NotRequired[Annotated[int, Field(ge=0)] | None]


_session_record = TypeAdapter(SessionRecord)


def load_session_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                        ) -> dict[str, Any]:
    """session.json from its bytes. `parameters` and `session_parameters` come back as
    the engine's dataclasses; the raw dicts of everything else."""
    record = decode_record(data, where, error)
    return validated(_session_record, record, where, error)


def read_session_record(directory: Path) -> dict[str, Any]:
    """`directory`'s session.json, validated: its raw record (parameters as dicts), or
    SessionNotFoundError / SessionError naming the file."""
    path = Path(directory) / "session.json"
    if not Path(directory).is_dir() or not (path.exists() or path.is_symlink()):
        what = "no such folder" if not Path(directory).exists() else "no session.json"
        raise SessionNotFoundError(f"not a training session: {what}", directory,
                                   "give the folder that holds session.json")
    record = decode_record(_read(directory, "session.json", MAX_SESSION_RECORD_BYTES), path)
    checked = validated(_session_record, record, path, SessionError)
    record["parameters"] = checked["parameters"].to_dict()
    record["session_parameters"] = checked["session_parameters"].to_dict()
    return record


def read_data_record(directory: Path) -> dict[str, Any]:
    """`directory`'s data.json, validated (see load_data_record)."""
    path = Path(directory) / "data.json"
    return load_data_record(_read(directory, "data.json", MAX_DATA_RECORD_BYTES), path)


def _read(directory: Path, name: str, max_size: int) -> bytes:
    from .files import read_confined

    try:
        return read_confined(directory, name, max_size=max_size)
    except MlwidgetsError as e:
        raise SessionError(e.what, e.where, "the session is damaged or unsafe; "
                           "nothing outside it was read") from None
    except OSError as e:
        raise SessionError(e.strerror or type(e).__name__, Path(directory) / name,
                           "the session is damaged or incomplete") from None


# -- data.json -----------------------------------------------------------------------------

Pair = Annotated[list[Annotated[str, Field(max_length=MAX_PATH_CHARS)]],
                 Field(min_length=2, max_length=2)]


@with_config(ConfigDict(extra="allow"))
class DataRecord(TypedDict):
    classes: Classes
    train: list[Pair]
    valid: list[Pair]
    skipped: NotRequired[list[Pair]]
    roots: NotRequired[Annotated[list[Text], Field(max_length=1024)]]


_data_record = TypeAdapter(DataRecord)


def load_data_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                     ) -> dict[str, Any]:
    """data.json from its bytes: every label one of its classes, every path a string."""
    record = validated(_data_record, decode_record(data, where, error), where, error)
    known = set(record["classes"])
    for part in ("train", "valid"):
        for index, (path, label) in enumerate(record[part]):
            if label not in known:
                raise error(f"{part}.{index}: label {label[:80]!r} is not one of its classes",
                            where, "the file is damaged")
            if not path or "\x00" in path:
                raise error(f"{part}.{index}: an empty or invalid path", where,
                            "the file is damaged")
    return record


# -- events.jsonl --------------------------------------------------------------------------

Step = Annotated[int, Field(ge=0, le=MAX_STEPS)]


@with_config(ConfigDict(extra="allow"))
class ReportEvent(TypedDict):
    type: Literal["report", "checkpoint"]
    time: Time
    phase: Literal[PHASES]  # type: ignore[valid-type]
    iteration: Iteration
    total_iterations: Iteration
    step: NotRequired[Step]
    elapsed: Time
    metrics: Annotated[dict[Annotated[str, Field(max_length=64)], Metric], Field(max_length=64)]
    id: NotRequired[Annotated[str, Field(max_length=256)]]


@with_config(ConfigDict(extra="allow"))
class StateEvent(TypedDict):
    type: Literal["state"]
    time: Time
    state: Literal[STATES]  # type: ignore[valid-type]
    phase: NotRequired[Literal[PHASES]]  # type: ignore[valid-type]
    iteration: NotRequired[Iteration]
    total_iterations: NotRequired[Iteration]
    step: NotRequired[Step]
    elapsed: NotRequired[Time]
    error: NotRequired[Annotated[str, Field(max_length=1 << 16)]]


@with_config(ConfigDict(extra="allow"))
class OtherEvent(TypedDict):
    """An event type a later version writes: kept, with its type and time checked."""

    type: Annotated[str, Field(max_length=64)]
    time: Time


_known_event = TypeAdapter(Annotated[ReportEvent | StateEvent, Field(discriminator="type")])
_other_event = TypeAdapter(OtherEvent)


def event_from_line(raw: bytes) -> dict[str, Any] | None:
    """One events.jsonl line as an event, or None when the line is not a valid event
    (garbage, NUL bytes a power loss left, a JSON value that is not an event object)."""
    if len(raw) > MAX_EVENT_LINE_BYTES or not raw.strip() or b"\x00" in raw:
        return None
    try:
        value = parse_json(raw, "events.jsonl")
    except MlwidgetsError:
        return None
    if not isinstance(value, dict):
        return None
    adapter = _known_event if value.get("type") in ("report", "checkpoint", "state") \
        else _other_event
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
