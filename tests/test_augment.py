"""Create ML's six augmentations are real, random, per-image transforms."""

import pytest
import torch

from mlwidgets import Augmentation
from mlwidgets.augment import augment_batch


def batch(n=8):
    # A left-to-right ramp: any flip, rotation or crop changes it visibly.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(n, 3, 32, 32)
    return ramp.clone()


def test_no_augmentation_leaves_the_batch_alone():
    x = batch()
    assert augment_batch(x, Augmentation()) is x


@pytest.mark.parametrize("aug", [
    Augmentation(flip=True), Augmentation(rotation=30), Augmentation(crop=0.3),
    Augmentation(blur=2.0), Augmentation(exposure=0.4), Augmentation(noise=0.1),
    Augmentation.all(),
])
def test_each_augmentation_changes_images_and_keeps_shape_and_range(aug):
    torch.manual_seed(0)
    x = batch()
    y = augment_batch(x.clone(), aug)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = [(y[i] - x[i]).abs().max() > 1e-3 for i in range(len(x))]
    assert any(changed)


def test_flip_mirrors_some_images_and_leaves_the_others():
    torch.manual_seed(1)
    x = batch(16)
    y = augment_batch(x.clone(), Augmentation(flip=True))
    mirrored = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_blur_smooths_an_edge():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:] = 1.0
    y = augment_batch(x.clone(), Augmentation(blur=3.0))
    assert 0.0 < y[0, 0, 10, 15] < 1.0 or 0.0 < y[0, 0, 10, 16] < 1.0
