"""The notebook panels. Each works on its own; `Studio` puts them in tabs.

They call the engine (sessions, checkpoints, classifiers) and never touch fastai or the
session's files themselves; every button's action is also a public method.
"""

from __future__ import annotations

from .charts import TrainingCharts
from .dashboard import TrainingDashboard
from .evaluation import EvaluationPanel
from .export import ExportForm
from .filelink import FileLink
from .predict import PredictionPanel
from .preview import DatasetPreview
from .studio import Studio
from .timeline import CheckpointTimeline

__all__ = ["CheckpointTimeline", "DatasetPreview", "EvaluationPanel", "ExportForm", "FileLink",
           "PredictionPanel", "Studio", "TrainingCharts", "TrainingDashboard"]
