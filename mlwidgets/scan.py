"""Find data problems in a session or a DataSource: gather one feature vector per image,
then run problems.find_problems on them.

A transfer-learning session has them already (its extracted features, the plain pass of
the training images and the validation images). Other sessions extract them once with a
feature extractor (the built-in EfficientNet-Lite0 by default) and keep them in their
features cache; a DataSource extracts them each time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import features as feats
from .data import DataSource, Item
from .errors import MlwidgetsError
from .files import mkdir_confined
from .models import build_model
from .parameters import ModelParameters
from .problems import DataReport, file_hashes, find_problems

if TYPE_CHECKING:
    from .session import TrainingSession

log = logging.getLogger(__name__)
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
    # Extracted once and kept in the session's features cache, under a key of their own
    # (never one training could take for its frozen body: that file is left empty here).
    params = ModelParameters(feature_extractor=feature_extractor, image_size=image_size)
    key = {**feats.feature_key(params, session.data_fingerprint), "purpose": "data problems"}
    directory = session.directory / feats.FEATURES_DIR
    try:
        found = feats.find(directory, key)
    except MlwidgetsError:  # damaged: extracted again below
        found = None
    how = f"features extracted by {feature_extractor} at {image_size} px"
    if found is not None:
        return found.tensors["train_x"].numpy(), how + " (cached)"
    x = extract_features(train + valid, session.classes, feature_extractor, image_size)
    try:
        mkdir_confined(session.directory, feats.FEATURES_DIR)
        feats.save(directory, key, {"train_x": torch.from_numpy(x)}, {})
    except (MlwidgetsError, OSError) as e:  # a read-only or unsafe session: not cached
        log.warning("the features for finding data problems are not cached: %s", e)
    return x, how


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
