"""fastai loaders over a split: decoded on access, or from the decoded-image cache.

`data.py` knows which images there are; this module turns item lists into the
`DataLoaders` a `Learner` trains on (see image_cache.py for the cache itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .data import Item


class ImageDataset:
    """Items as (float tensor (3, size, size) in 0..1, class index), decoded on access."""

    def __init__(self, items: Sequence[Item], classes: Sequence[str], image_size: int):
        self.items = list(items)
        self.image_size = image_size
        self.class_index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        from .images import load_array

        item = self.items[i]
        pixels = torch.from_numpy(load_array(item.path, self.image_size))
        return pixels.permute(2, 0, 1).float().div_(255), self.class_index[item.label]


def make_dataloaders(train: Sequence[Item], valid: Sequence[Item], classes: Sequence[str],
                     image_size: int, batch_size: int, device: Any = "cpu",
                     cache_mb: float | None = None,
                     progress: Callable[[int, int], object] | None = None) -> Any:
    """fastai DataLoaders over the two item lists.

    Training batches are shuffled (drawn from torch's global RNG, so `set_seed` before
    `fit` fixes the order) and the last partial one is dropped when there is more than one;
    validation is in order, at twice the batch size. Items are (float (3, S, S) in 0..1,
    int64 class index).

    When both lists' decoded pixels (3 * image_size**2 bytes an image) fit in `cache_mb`
    MiB, every image is decoded and resized once, in parallel, into RAM, and batches are
    gathered from there: for small models, epochs up to several times faster, the more so
    the larger the files are. Otherwise both lists are decoded from disk on every pass.
    `cache_mb=None` means the default budget, a quarter of the memory the process may use
    (physical, or the container's cgroup limit when lower) but at most 2048 MiB
    (`image_cache.default_cache_mb()`); `cache_mb=0` turns the cache off.
    `progress(done, total)` is called while decoding (throttled). A file that cannot be
    decoded raises ValueError naming it.
    """
    from fastai.data.core import DataLoaders

    from .image_cache import GatheringDataLoader, SeededDataLoader, decode_images, fits_in_cache

    bs = min(batch_size, len(train))
    loader: type[SeededDataLoader]
    if fits_in_cache(len(train) + len(valid), image_size, cache_mb):
        decoded = decode_images([*train, *valid], classes, image_size, progress)
        train_ds, valid_ds = decoded.split(len(train))
        loader = GatheringDataLoader
    else:
        train_ds = ImageDataset(train, classes, image_size)
        valid_ds = ImageDataset(valid, classes, image_size)
        loader = SeededDataLoader
    # Workers would compete with the model for 2 cores and fork inside notebook threads.
    train_dl = loader(train_ds, bs=bs, shuffle=True, drop_last=len(train) > bs, num_workers=0)
    valid_dl = loader(valid_ds, bs=batch_size * 2, shuffle=False, num_workers=0)
    return DataLoaders(train_dl, valid_dl, device=device)
