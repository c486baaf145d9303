"""Grad-CAM: where in an image a checkpoint's network looks when it picks a class.

Every network here is `normalize -> body -> head`; the body's output is the last
convolutional block's feature map (small_cnn's fourth block, a resnet's layer4, a
mobilenet's last 1x1 convolution, the built-in EfficientNet-Lite0's head convolution).
Grad-CAM weighs that map's channels by the mean gradient of the class's logit and keeps
the positive part (Selvaraju et al., 2017), upsampled to the image.

Honest limits, said instead of drawn:
- a map of 2x2 cells or fewer (small networks at tiny image sizes) cannot localise
  anything: `heatmap` is None and `reason` says so;
- a transfer-learning checkpoint of the head phase has the frozen backbone: the feature map
  is the same at every such checkpoint and only the head's channel weights change (`note`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .checkpoints import BODY_FILE, Checkpoint
from .images import load_array
from .predictions import network

MIN_MAP_CELLS = 3  # a last map smaller than 3x3 cells says nothing about where
FROZEN_NOTE = ("the backbone is frozen at this checkpoint (transfer learning trains only the "
               "classifier head): the feature map is the same at every checkpoint of this "
               "phase and only the head's weighting of it changes")


@dataclass(frozen=True, eq=False)
class Saliency:
    """A Grad-CAM heat map (image_size x image_size, 0..1) for `target`, or why none."""

    target: str
    probability: float  # of `target`
    predicted: str
    image: np.ndarray  # (size, size, 3) uint8, what the network saw
    heatmap: np.ndarray | None
    map_size: tuple[int, int]  # cells of the last convolutional map
    reason: str = ""  # why there is no heat map
    note: str = ""  # what to keep in mind when reading it

    @property
    def is_meaningful(self) -> bool:
        return self.heatmap is not None

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        """The image with the heat map over it (red: where the class's evidence is)."""
        if self.heatmap is None:
            return self.image
        h = self.heatmap[..., None]
        colour = np.concatenate([np.clip(2 * h, 0, 1), np.clip(2 * h - 1, 0, 1) * 0.8,
                                 np.zeros_like(h)], axis=2) * 255
        weight = alpha * np.clip(h * 1.5, 0, 1)
        return (self.image * (1 - weight) + colour * weight).astype(np.uint8)

    def overlay_png(self, size: int | None = None) -> bytes:
        from PIL import Image

        picture = Image.fromarray(self.overlay())
        if size is not None:
            picture = picture.resize((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return out.getvalue()

    def __repr__(self) -> str:
        shown = "no map: " + self.reason if self.heatmap is None else "heat map"
        return (f"Saliency({self.target!r} p={self.probability:.2f}, last map "
                f"{self.map_size[0]}x{self.map_size[1]}, {shown})")


def grad_cam(model: torch.nn.Module, classes: list[str], image_size: int, image: Any,
             target: str | None = None, note: str = "") -> Saliency:
    """Grad-CAM of `model` (normalize -> body -> head) on one image (a path or PIL image)."""
    pixels = image if isinstance(image, np.ndarray) else load_array(image, image_size)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255
    found: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        found["map"] = output

    was_training = model.training
    model.eval()
    handle = model.body.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x.requires_grad_(True)  # so the map keeps a graph even with frozen weights
            logits = model(x)
            probs = torch.softmax(logits, dim=1)[0].detach()
            index = int(probs.argmax()) if target is None else classes.index(target)
            logits[0, index].backward()
    finally:
        handle.remove()
        model.train(was_training)
    fmap, grad = found["map"].detach()[0], found["map"].grad[0]
    cells = (int(fmap.shape[1]), int(fmap.shape[2]))
    common = {"target": classes[index], "probability": float(probs[index]),
              "predicted": classes[int(probs.argmax())], "image": pixels, "map_size": cells,
              "note": note}
    if min(cells) < MIN_MAP_CELLS:
        return Saliency(heatmap=None, reason=(
            f"the last convolutional map is {cells[0]}x{cells[1]} cells at {image_size} px: "
            "too coarse to show where the network looks; train at a larger image size"),
            **common)
    cam = torch.relu((grad.mean(dim=(1, 2))[:, None, None] * fmap).sum(0))
    if float(cam.max()) <= 0:
        return Saliency(heatmap=None, reason="no part of the image raises this class's score",
                        **common)
    cam = torch.nn.functional.interpolate(cam[None, None], size=(image_size, image_size),
                                          mode="bilinear", align_corners=False)[0, 0]
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-12)
    return Saliency(heatmap=cam.numpy(), **common)


def checkpoint_note(checkpoint: Checkpoint | None) -> str:
    """FROZEN_NOTE for a head-phase transfer-learning checkpoint, else ''."""
    if checkpoint is not None and checkpoint.phase == "training" and BODY_FILE in checkpoint.files:
        return FROZEN_NOTE
    return ""


def checkpoint_saliency(checkpoint: Checkpoint, image: Any, target: str | None = None
                        ) -> Saliency:
    """Grad-CAM of `checkpoint`'s network on `image`."""
    record = checkpoint.model_record()
    return grad_cam(network(checkpoint), list(record["classes"]), int(record["image_size"]),
                    image, target, checkpoint_note(checkpoint))


def classifier_saliency(classifier: Any, image: Any, target: str | None = None) -> Saliency:
    """Grad-CAM of an ImageClassifier (anything with model, classes, image_size)."""
    return grad_cam(classifier.model, list(classifier.classes), classifier.image_size, image,
                    target, checkpoint_note(getattr(classifier, "checkpoint", None)))
