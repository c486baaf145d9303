"""mlwidgets: Create ML's image-classifier workflow in Jupyter, on fastai.

The engine (everything importable from here) never imports a UI library; the
notebook panels live in `mlwidgets.ui`.
"""

from __future__ import annotations

import logging
import warnings

from . import datasets
from . import scan as _scan  # noqa: F401  (gives DataSource.find_data_problems)
from .checkpoint_store import CheckpointStore
from .checkpoints import Checkpoint, CheckpointError
from .classifier import ImageClassifier, Prediction
from .coreml import ModelMetadata
from .data import DataSource
from .events import Progress, RunState
from .job import Job
from .metrics import ClassifierMetrics
from .models import PretrainedWeightsUnavailable
from .parameters import Augmentation, ModelParameters, SessionParameters
from .session import TrainingSession

__version__ = "0.1.0"

# A library stays quiet unless the application configures logging: nothing from the
# training thread may spill into whatever notebook cell runs next.
logging.getLogger(__name__).addHandler(logging.NullHandler())
# Deprecation notices fastai triggers on import with current torch and pandas; not actionable
# for our users, and they would otherwise print into the cell that starts training.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)
warnings.filterwarnings("ignore", message=r"The 'mode\.chained_assignment' option is deprecated")


def __getattr__(name: str):
    # `mw.Studio` and `mw.ui` load ipywidgets and plotly only when a notebook asks for them.
    if name in ("ui", "Studio"):
        import importlib

        ui = importlib.import_module(".ui", __name__)
        return ui if name == "ui" else ui.Studio
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Augmentation", "Checkpoint", "CheckpointError", "CheckpointStore", "ClassifierMetrics",
    "DataSource", "ImageClassifier", "Job", "ModelMetadata", "ModelParameters", "Prediction",
    "PretrainedWeightsUnavailable", "Progress", "RunState",
    "SessionParameters", "Studio", "TrainingSession", "datasets", "ui", "__version__",
]
