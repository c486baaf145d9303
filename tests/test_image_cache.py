"""The decoded-image cache behind make_dataloaders: same tensors as streaming, seeded
shuffles, the memory budget, errors and progress, and a fastai Learner on top.

Images are the shared tiny dataset (48 at 32 px) or a few drawn with PIL in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mlwidgets.data import Item, split_items
from mlwidgets.image_cache import (
    DecodedImages,
    GatheringDataLoader,
    SeededDataLoader,
    TensorRows,
    cache_bytes,
    default_cache_mb,
    fits_in_cache,
)
from mlwidgets.loaders import ImageDataset, make_dataloaders

SIZE, BS = 24, 8  # 24 px: the 32 px images are really resized


@pytest.fixture(scope="module")
def split(tiny_data) -> tuple[list[Item], list[Item]]:
    return split_items(tiny_data.items, 0.25, seed=0)


def loaders(split, classes, **kwargs):
    return make_dataloaders(*split, classes, SIZE, BS, **kwargs)


def epoch(dl, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    return list(dl)


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cached_batches_are_exactly_the_streamed_ones(split, tiny_data) -> None:
    cached = loaders(split, tiny_data.classes)
    streamed = loaders(split, tiny_data.classes, cache_mb=0)
    assert isinstance(cached.train, GatheringDataLoader)
    assert isinstance(cached.train.dataset, DecodedImages)
    assert_same_batches(epoch(cached.valid), epoch(streamed.valid))
    assert_same_batches(epoch(cached.train, 3), epoch(streamed.train, 3))  # same shuffle too


def test_gathered_tensor_rows_are_the_per_item_batches() -> None:
    """Transfer learning's head trains on TensorRows: the same batches, in the same seeded
    order, as a per-item loader over the same tensors, the partial last batch dropped alike."""
    x, y = torch.randn(21, 5), torch.arange(21) % 3
    gathered = GatheringDataLoader(TensorRows(x, y), bs=BS, shuffle=True, drop_last=True)
    per_item = SeededDataLoader(torch.utils.data.TensorDataset(x, y), bs=BS, shuffle=True,
                                drop_last=True)
    first = epoch(gathered, 7)
    assert len(first) == 2
    assert_same_batches(first, epoch(per_item, 7))
    assert not torch.equal(first[0][1], y[:BS])  # shuffled, so the test compares orders
    assert_same_batches(epoch(GatheringDataLoader(TensorRows(x, y), bs=BS)),
                        epoch(SeededDataLoader(torch.utils.data.TensorDataset(x, y), bs=BS)))


def test_validation_is_in_item_order_with_imagedataset_values(split, tiny_data) -> None:
    valid = split[1]
    reference = ImageDataset(valid, tiny_data.classes, SIZE)
    x, y = (torch.cat(t) for t in zip(*loaders(split, tiny_data.classes).valid))
    assert x.shape == (len(valid), 3, SIZE, SIZE) and float(x.min()) >= 0 <= float(x.max()) <= 1
    for i in range(len(valid)):
        pixels, label = reference[i]
        assert torch.equal(x[i], pixels) and int(y[i]) == label


def test_training_order_is_seeded_by_torch(split, tiny_data) -> None:
    dl = loaders(split, tiny_data.classes).train
    first = torch.cat([y for _, y in epoch(dl, seed=1)])
    assert torch.equal(torch.cat([y for _, y in epoch(dl, seed=1)]), first)
    shuffles = {tuple(torch.cat([y for _, y in epoch(dl, seed=s)]).tolist()) for s in range(2, 6)}
    assert len(shuffles) > 1  # other seeds, other orders
    torch.manual_seed(1)
    list(dl)
    second_epoch = torch.cat([y for _, y in dl])  # the next epoch is shuffled anew
    assert not torch.equal(second_epoch, first)


def test_partial_training_batch_dropped_validation_batches_doubled(split, tiny_data) -> None:
    train, valid = split  # 36 and 12 images
    dls = loaders(split, tiny_data.classes)
    sizes = [len(y) for _, y in dls.train]
    assert sizes == [BS] * (len(train) // BS) and len(dls.train) == len(sizes)
    assert [len(y) for _, y in dls.valid] == [len(valid)]  # one batch of up to 2 x BS
    assert dls.train.bs == BS and dls.valid.bs == 2 * BS and dls.train.n == len(train)
    few = make_dataloaders(train[:5], valid, tiny_data.classes, SIZE, BS)
    assert [len(y) for _, y in few.train] == [5]  # fewer than a batch: one batch, kept


def test_over_budget_streams_from_disk(split, tiny_data) -> None:
    need_mb = cache_bytes(sum(map(len, split)), SIZE) / 2**20
    calls: list[tuple[int, int]] = []
    dls = loaders(split, tiny_data.classes, cache_mb=need_mb * 0.99, progress=calls.append)
    assert isinstance(dls.train.dataset, ImageDataset) and isinstance(dls.valid.dataset,
                                                                      ImageDataset)
    assert type(dls.train) is SeededDataLoader and calls == []  # nothing decoded ahead
    fits = loaders(split, tiny_data.classes, cache_mb=need_mb)
    assert isinstance(fits.train.dataset, DecodedImages)


def test_cache_mb_zero_disables_the_cache(split, tiny_data) -> None:
    dls = loaders(split, tiny_data.classes, cache_mb=0)
    assert isinstance(dls.train.dataset, ImageDataset) and not fits_in_cache(1, 1, 0)


def test_budget_default_and_bad_values() -> None:
    assert 0 < default_cache_mb() <= 2048
    assert fits_in_cache(10, 64, None) and not fits_in_cache(10**6, 224, None)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="cache_mb"):
            fits_in_cache(10, 64, bad)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_default_budget_follows_the_container_memory_limit(tmp_path: Path, monkeypatch,
                                                               version: str) -> None:
    import mlwidgets.image_cache as image_cache

    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    if version == "v2":  # Binder: 2 GiB on the container's own cgroup, none above it
        proc.write_text("0::/kubepods/pod1/binder\n")
        (root / "kubepods" / "pod1" / "binder").mkdir(parents=True)
        (root / "kubepods" / "pod1" / "binder" / "memory.max").write_text(f"{2 << 30}\n")
        (root / "kubepods" / "memory.max").write_text("max\n")
    else:  # a limit on a parent, "unlimited" (a huge number) on the process's own
        proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
        (root / "memory" / "docker" / "abc").mkdir(parents=True)
        (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(
            "9223372036854771712\n")
        (root / "memory" / "docker" / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    assert image_cache.cgroup_memory_limit(root, proc) == 2 << 30
    assert image_cache.cgroup_memory_limit(tmp_path / "none", tmp_path / "none") is None
    monkeypatch.setattr(image_cache, "cgroup_memory_limit", lambda: 2 << 30)
    assert default_cache_mb() == 512  # a quarter of the container's 2 GiB


def test_a_corrupt_file_raises_naming_it(tmp_path: Path) -> None:
    items = []
    for k in range(6):
        path = tmp_path / f"img_{k}.png"
        Image.new("RGB", (10, 14), (40 * k, 90, 200)).save(path)
        items.append(Item(path, "ab"[k % 2]))
    items[4].path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="img_4.png"):
        make_dataloaders(items[:4], items[4:], ["a", "b"], 8, 2)


def test_progress_reports_done_and_total(split, tiny_data) -> None:
    calls: list[tuple[int, int]] = []
    loaders(split, tiny_data.classes, progress=lambda done, total: calls.append((done, total)))
    total = sum(map(len, split))
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_progress_can_cancel_by_raising(split, tiny_data) -> None:
    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        loaders(split, tiny_data.classes, progress=cancel)


def fitted_learner(dls, n_classes: int):
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    from fastai.learner import Learner
    from fastai.optimizer import Adam
    from fastai.torch_core import set_seed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, n_classes))
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), opt_func=Adam)
    set_seed(0)  # as trainer.py does before fit: the batch order follows
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=1e-2)
    return learn


def test_fastai_learner_fits_and_validates_on_the_cache(split, tiny_data) -> None:
    n_classes = len(tiny_data.classes)
    dls = loaders(split, tiny_data.classes, device="cpu")
    learn = fitted_learner(dls, n_classes)
    with learn.no_bar(), learn.no_logging():
        loss = learn.validate()[0]
        preds, targets = learn.get_preds()
    x, y = (torch.cat(t) for t in zip(*dls.valid))
    assert torch.equal(targets, y) and preds.shape == (len(y), n_classes)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(learn.model.eval()(x), y)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    x, y = dls.train.one_batch()
    assert x.shape == (BS, 3, SIZE, SIZE) and x.device.type == "cpu"
    again = fitted_learner(dls, n_classes)  # same seed: the same run, weight for weight
    for a, b in zip(learn.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)

def test_batches_convert_on_the_loaders_device(split, tiny_data) -> None:
    images: DecodedImages = loaders(split, tiny_data.classes).train.dataset
    x, y = images.batch(torch.tensor([2, 0]), torch.device("meta"))  # stands in for a GPU
    assert x.device.type == y.device.type == "meta"
    assert x.shape == (2, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = images.batch(torch.tensor([2, 0]), torch.device("cpu"))
    assert torch.equal(x[1], images[0][0]) and torch.equal(x[0], images[2][0])
