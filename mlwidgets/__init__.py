"""mlwidgets: Create ML's image-classifier workflow in Jupyter, on fastai.

The engine (everything importable from here) never imports a UI library; the
notebook panels live in `mlwidgets.ui`.
"""

from __future__ import annotations

import logging

from . import datasets
from .checkpoints import Checkpoint, CheckpointError, CheckpointStore
from .classifier import ImageClassifier, Prediction
from .data import DataSource
from .job import Job
from .metrics import ClassifierMetrics
from .parameters import Augmentation, ModelParameters, SessionParameters
from .session import Progress, TrainingSession

__version__ = "0.1.0"

# A library stays quiet unless the application configures logging: nothing from the
# training thread may spill into whatever notebook cell runs next.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Augmentation", "Checkpoint", "CheckpointError", "CheckpointStore", "ClassifierMetrics",
    "DataSource", "ImageClassifier", "Job", "ModelParameters", "Prediction", "Progress",
    "SessionParameters", "TrainingSession", "datasets", "__version__",
]
