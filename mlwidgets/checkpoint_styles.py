"""Reading checkpoints back from their public shapes, and finding one by any name it shows.

`Checkpoint.to_dict(style)` writes the shapes; `decode` is their inverse (Create ML's
`MLCheckpoint` is Codable), and `find` accepts every identifier those shapes print.
A leaf module: it knows the record's fields, not the Checkpoint class (passed in).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

STYLES = ("native", "createml", "openai", "mistral")
# Each style's metric name -> ours.
CREATEML_METRICS = {"loss": "train_loss", "accuracy": "train_accuracy",
                    "validationLoss": "valid_loss", "validationAccuracy": "valid_accuracy"}
OPENAI_METRICS = {"train_loss": "train_loss", "train_mean_token_accuracy": "train_accuracy",
                  "valid_loss": "batch_valid_loss",
                  "valid_mean_token_accuracy": "batch_valid_accuracy",
                  "full_valid_loss": "valid_loss",
                  "full_valid_mean_token_accuracy": "valid_accuracy"}
MISTRAL_METRICS = {"train_loss": "train_loss", "valid_loss": "valid_loss",
                   "valid_mean_token_accuracy": "valid_accuracy"}
# The OpenAI style's `fine_tuned_model_checkpoint`: mlwidgets:<architecture>:<session>:ckpt-step-N
MODEL_CHECKPOINT_NAME = re.compile(r"^mlwidgets:(?P<architecture>[^:]*):(?P<session>[^:]*)"
                                   r":ckpt-step-(?P<step>\d+)$")


def decode(cls: Any, d: dict[str, Any], style: str | None = None) -> Any:
    """`cls` (Checkpoint) from a dictionary in `style`; see `Checkpoint.from_dict`."""
    style = style or style_of(d)
    try:
        if style == "native":
            return cls(
                id=d["id"], session_id=d["session_id"], phase=d["phase"],
                iteration=int(d["iteration"]), step_number=int(d["step_number"]),
                created_at=float(d["created_at"]), metrics=dict(d["metrics"]),
                path=Path(d["path"]) if "path" in d else path_of_url(d["url"]),
                files=dict(d.get("files") or {}), model=dict(d.get("model") or {}),
                optimizer=dict(d.get("optimizer") or {}), confusion=d.get("confusion"),
                partial=bool(d.get("partial", False)), resume=d.get("resume"))
        if style == "createml":
            path = path_of_url(d["url"])
            return cls(
                id=path.name, session_id="", phase=snake_phase(d["phase"]),
                iteration=int(d["iteration"]), step_number=_leading_step(path.name),
                created_at=datetime.fromisoformat(d["date"]).timestamp(), path=path,
                metrics=_ours(d.get("metrics") or {}, CREATEML_METRICS))
        if style == "openai":
            name = MODEL_CHECKPOINT_NAME.match(d.get("fine_tuned_model_checkpoint", ""))
            architecture = name["architecture"] if name else ""
            return cls(
                id=d["id"], session_id=d.get("fine_tuning_job_id", ""),
                phase=_phase_of_id(d["id"]), iteration=0, step_number=int(d["step_number"]),
                created_at=float(d["created_at"]), path=Path("."),
                model={"architecture": architecture} if architecture else {},
                metrics=_ours(d.get("metrics") or {}, OPENAI_METRICS))
        if style == "mistral":
            step = d["step_number"] if "step_number" in d else d["stepNumber"]
            created = d["created_at"] if "created_at" in d else d["createdAt"]
            return cls(
                id="", session_id="", phase="training", iteration=0, step_number=int(step),
                created_at=float(created), path=Path("."),
                metrics=_ours(d.get("metrics") or {}, MISTRAL_METRICS))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a {style} checkpoint dictionary: {type(e).__name__}: {e}") from None
    raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")


def style_of(d: dict[str, Any]) -> str:
    """Which style wrote `d`, told from its keys."""
    if not isinstance(d, dict):
        raise TypeError(f"a checkpoint dictionary is a dict, got {type(d).__name__}")
    if d.get("object") == "fine_tuning.job.checkpoint":
        return "openai"
    if "session_id" in d:
        return "native"
    if "url" in d and "phase" in d:
        return "createml"
    if "step_number" in d or "stepNumber" in d:
        return "mistral"
    raise ValueError(f"cannot tell which checkpoint style has the keys {sorted(d)}; "
                     f"pass style= (one of {', '.join(STYLES)})")


def find(checkpoints: Sequence[Any], which: Any, best: Callable[[], Any],
         where: str = "this session") -> Any:
    """The checkpoint `which` names, by any identifier the styles print.

    "latest"; "best" (calls `best()`); the native id (the OpenAI `id` is the same); the
    OpenAI `fine_tuned_model_checkpoint` (its step number); a Checkpoint's own url (the Create
    ML `url`); or an iteration number (int or digits): the last checkpoint of that iteration,
    preferring a whole one (not a pause inside the next) with a trained classifier
    (extracting features counts iterations too).
    KeyError naming what was asked and the latest ids when nothing matches.
    """
    if isinstance(which, bool) or not isinstance(which, (str, int)):
        raise TypeError(f"a checkpoint is named by a str or an iteration number, got {which!r}")
    text = str(which).strip()
    if text == "latest":
        if not checkpoints:
            raise ValueError(f"{where} has no checkpoints yet")
        return checkpoints[-1]
    if text == "best":
        return best()
    for c in checkpoints:
        if c.id == text:
            return c
    name = MODEL_CHECKPOINT_NAME.match(text)
    found: list[Any] = []
    if name:
        found = [c for c in checkpoints if c.step_number == int(name["step"])
                 and c.session_id in (name["session"], "")]
    elif text.isdigit():
        found = [c for c in checkpoints if c.iteration == int(text)]
        # A pause inside the next iteration records the last finished one: prefer whole ones.
        found = [c for c in found if c.has_model and not c.partial] or found
    elif text.startswith("file:"):
        path = path_of_url(text)
        found = [c for c in checkpoints if c.path.resolve() == path]
    if found:
        return found[-1]
    known = ", ".join(c.id for c in checkpoints[-5:]) or "none"
    raise KeyError(f"no checkpoint {which!r} in {where} (latest: {known}); name one by id, "
                   "iteration number, fine_tuned_model_checkpoint, 'best' or 'latest'")


def path_of_url(url: str) -> Path:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"{url!r} is not a file URL")
    return Path(unquote(parsed.path).rstrip("/") or "/")


def snake_phase(phase: str) -> str:
    """Create ML's camelCase phase (`extractingFeatures`) as ours (`extracting_features`)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in phase)


def _ours(metrics: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {ours: metrics[key] for key, ours in names.items() if key in metrics}


def _leading_step(name: str) -> int:
    digits = name.split("-", 1)[0]
    return int(digits) if digits.isdigit() else 0


def _phase_of_id(checkpoint_id: str) -> str:
    # Ids are `<step>-<phase>` or `<step>-<phase>-<n>` (see CheckpointStore._unused_name).
    parts = checkpoint_id.split("-")
    return parts[1] if len(parts) > 1 and parts[1] else "training"
