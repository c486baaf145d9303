"""Find data problems in a session or a DataSource: gather one feature vector per image,
then run problems.find_problems on them.

A transfer-learning session has them already (its extracted features, the plain pass of
the training images and the validation images). Other sessions and DataSources extract
them with a feature extractor (the built-in EfficientNet-Lite0 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import features as feats
from .data import DataSource, Item
from .models import build_model
from .parameters import ModelParameters
from .problems import DataReport, file_hashes, find_problems

if TYPE_CHECKING:
    from .session import TrainingSession

DEFAULT_EXTRACTOR, DEFAULT_SIZE = "efficientnet_lite0", 128


def extract_features(items: Sequence[Item], classes: Sequence[str],
                     feature_extractor: str = DEFAULT_EXTRACTOR,
                     image_size: int = DEFAULT_SIZE) -> np.ndarray:
    """Pooled features of each image under `feature_extractor` (one batched pass)."""
    params = ModelParameters(feature_extractor=feature_extractor, image_size=image_size)
    model = build_model(params, len(classes))
    tensors = feats.extract(model, list(items), [], list(classes), params, views=0)
    return tensors["train_x"].numpy()


def session_features(session: TrainingSession, feature_extractor: str = DEFAULT_EXTRACTOR,
                     image_size: int = DEFAULT_SIZE) -> tuple[np.ndarray, str]:
    """(features of training then validation images, where they came from)."""
    train, valid = session.split
    if session.parameters.algorithm == "transfer_learning":
        found = feats.find(session.directory / feats.FEATURES_DIR, session.feature_key())
        if found is not None:
            t = found.tensors
            # train_x holds the plain pass first, then any augmented views.
            return (np.concatenate([t["train_x"][:len(train)].numpy(),
                                    t["valid_x"].numpy()]), "cached features")
    x = extract_features(train + valid, session.classes, feature_extractor, image_size)
    return x, f"features extracted by {feature_extractor} at {image_size} px"


def session_problems(session: TrainingSession, feature_extractor: str = DEFAULT_EXTRACTOR,
                     image_size: int = DEFAULT_SIZE, **options: Any) -> DataReport:
    """Problems among a session's training and validation images."""
    train, valid = session.split
    items = train + valid
    x, _ = session_features(session, feature_extractor, image_size)
    return find_problems(x, [i.label for i in items], session.classes,
                         [i.path for i in items], ["train"] * len(train) + ["valid"] * len(valid),
                         hashes=file_hashes([i.path for i in items]), **options)


def data_problems(data: DataSource, feature_extractor: str = DEFAULT_EXTRACTOR,
                  image_size: int = DEFAULT_SIZE, **options: Any) -> DataReport:
    """Problems among a DataSource's images (features extracted now)."""
    x = extract_features(data.items, data.classes, feature_extractor, image_size)
    return find_problems(x, data.labels, data.classes, [i.path for i in data.items],
                         hashes=file_hashes([i.path for i in data.items]), **options)


DataSource.problem_finder = staticmethod(data_problems)
