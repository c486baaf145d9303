"""Controls for what to train: the feature extractor (or a network from scratch), image
size, iterations, learning rate, and Create ML's six augmentations.
`ParameterForm.parameters` is the ModelParameters they say."""

from __future__ import annotations

import ipywidgets as widgets

from ..parameters import (
    ARCHITECTURES,
    DEFAULT_FEATURE_EXTRACTOR,
    FEATURE_EXTRACTORS,
    NATIVE_IMAGE_SIZE,
    PRETRAINABLE,
    SCRATCH_IMAGE_SIZE,
    Augmentation,
    ModelParameters,
)

_WIDE = {"description_width": "120px"}
FROM_SCRATCH = "none: train from scratch"  # the extractor choice that means None
# (field, label, max, step): the float augmentations, with the ranges Augmentation accepts.
_AUGMENT_SLIDERS = (("rotation", "rotation (°)", 45.0, 1.0), ("crop", "crop", 0.5, 0.05),
                    ("blur", "blur (px)", 3.0, 0.1), ("exposure", "exposure", 0.9, 0.05),
                    ("noise", "noise", 0.2, 0.01))


class ParameterForm(widgets.VBox):
    """Edit ModelParameters; fields this form does not show keep their values."""

    def __init__(self, parameters: ModelParameters | None = None):
        self._base = parameters or ModelParameters()
        p = self._base
        extractors = [(f"{name} (built in)" if name == DEFAULT_FEATURE_EXTRACTOR
                       else f"{name} (download)", name) for name in FEATURE_EXTRACTORS]
        if p.feature_extractor and p.feature_extractor not in FEATURE_EXTRACTORS:
            extractors.append((p.feature_extractor, p.feature_extractor))  # a timm model
        self.feature_extractor = widgets.Dropdown(
            options=[*extractors, (FROM_SCRATCH, None)], value=p.feature_extractor,
            description="feature extractor", style=_WIDE)
        self.architecture = widgets.Dropdown(options=ARCHITECTURES, value=p.architecture,
                                             description="architecture", style=_WIDE)
        self.pretrained = widgets.Checkbox(value=p.pretrained, description="pretrained weights",
                                           indent=False)
        self.image_size = widgets.BoundedIntText(value=p.image_size, min=16, max=1024, step=8,
                                                 description="image size (px)", style=_WIDE)
        self.iterations = widgets.BoundedIntText(value=p.max_iterations, min=1, max=10_000,
                                                 description="iterations", style=_WIDE)
        # A text box, not a log slider: a slider snaps 0.003 to 10**-2.5 = 0.00316.
        self.learning_rate = widgets.BoundedFloatText(value=p.learning_rate, min=1e-7, max=1.0,
                                                      step=1e-4, description="learning rate",
                                                      style=_WIDE)
        a = p.augmentation
        self.flip = widgets.Checkbox(value=a.flip, description="flip", indent=False)
        self.augment = {name: widgets.FloatSlider(value=getattr(a, name), min=0.0, max=top,
                                                  step=step, description=label, style=_WIDE)
                        for name, label, top, step in _AUGMENT_SLIDERS}
        self.architecture.observe(self._architecture_changed, "value")
        self.feature_extractor.observe(self._extractor_changed, "value")
        self._architecture_changed()
        model = widgets.VBox([widgets.HTML("<b>Model</b>"), self.feature_extractor,
                              self.architecture, self.pretrained, self.image_size,
                              self.iterations, self.learning_rate])
        augment = widgets.VBox([widgets.HTML("<b>Augmentation</b>"), self.flip,
                                *self.augment.values()])
        self.locked_note = widgets.HTML()  # why every control is greyed out, once they are
        super().__init__([widgets.HBox([model, augment]), self.locked_note])

    def _architecture_changed(self, _change: object = None) -> None:
        # The architecture (and torchvision's weights for it) only counts without extractor.
        scratch = self.feature_extractor.value is None
        can = scratch and self.architecture.value in PRETRAINABLE
        self.architecture.disabled = not scratch
        self.pretrained.disabled = not can
        if not can:
            self.pretrained.value = False
        self.architecture.tooltip = ("" if scratch else
                                     "used only without a feature extractor (from scratch)")
        self.pretrained.tooltip = "" if can else (
            "with a feature extractor, its pretrained weights are always used" if not scratch
            else f"pretrained weights exist only for {', '.join(PRETRAINABLE)}")

    def _extractor_changed(self, change: dict[str, object]) -> None:
        # A size left at the old choice's default follows the new one's (224 <-> 64).
        default = {None: SCRATCH_IMAGE_SIZE}
        if self.image_size.value == default.get(change["old"], NATIVE_IMAGE_SIZE):
            self.image_size.value = default.get(change["new"], NATIVE_IMAGE_SIZE)
        self._architecture_changed()

    @property
    def parameters(self) -> ModelParameters:
        """The parameters the controls show (a ValueError names a bad value)."""
        augmentation = Augmentation(flip=self.flip.value,
                                    **{k: round(w.value, 4) for k, w in self.augment.items()})
        changes = dict(feature_extractor=self.feature_extractor.value,
                       architecture=self.architecture.value, pretrained=self.pretrained.value,
                       image_size=self.image_size.value, max_iterations=self.iterations.value,
                       learning_rate=self.learning_rate.value,
                       augmentation=augmentation)
        if (changes["architecture"], changes["feature_extractor"]) != (
                self._base.architecture, self._base.feature_extractor):
            changes["weights_file"] = None  # weights belong to the network they came from
        return self._base.replace(**changes)

    def show_budget(self, iterations: int) -> None:
        """Show a session's real iteration budget (Train more raises it past the form's)."""
        if self.iterations.value != iterations:
            self.iterations.max = max(self.iterations.max, iterations)
            self.iterations.value = iterations

    def set_enabled(self, enabled: bool) -> None:
        """Lock the controls once a session exists: its parameters are fixed."""
        why = "" if enabled else ("A session's parameters are fixed once it exists: Train more "
                                  "raises its iterations; a new session_dir starts afresh.")
        self.locked_note.value = (f"<div style='color:var(--jp-ui-font-color2, #666)'>{why}</div>"
                                  if why else "")
        for control in (self.feature_extractor, self.image_size, self.iterations,
                        self.learning_rate, self.flip, *self.augment.values()):
            control.disabled = not enabled
            control.tooltip = why or None
        scratch = self.feature_extractor.value is None
        self.architecture.disabled = not enabled or not scratch
        self.pretrained.disabled = (not enabled or not scratch
                                    or self.architecture.value not in PRETRAINABLE)
