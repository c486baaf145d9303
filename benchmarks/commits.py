"""How long training is blocked per checkpoint commit: synchronous vs in the background.

resnet18 with its Adam state (about 135 MB a checkpoint), one commit per iteration. In
the background, training waits only for the in-memory snapshot, provided an iteration
takes longer than a commit (target <= 50 ms blocked); when iterations are shorter, the
next commit waits for the one in flight, and the last column shows that wait.
Run: `make bench` (or `python benchmarks/commits.py --repeats 3`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from common import median, print_figures, print_table  # noqa: E402
from fastai.optimizer import Adam  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets.checkpoint_store import CheckpointStore  # noqa: E402
from mlwidgets.commits import BackgroundCommits, optimizer_snapshot_of, snapshot_of  # noqa: E402
from mlwidgets.malloc import tune_for_training  # noqa: E402
from mlwidgets.models import build_model, model_record  # noqa: E402


def model_and_optimizer(architecture: str) -> tuple[torch.nn.Module, object]:
    params = mw.ModelParameters(algorithm="from_scratch", architecture=architecture,
                                image_size=64)
    model = build_model(params, 10)
    opt = Adam(list(model.parameters()), lr=1e-3)
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    opt.step()  # Adam's moments exist now
    return model, opt, params


def snapshot(store, model, opt, params, step):
    return dict(phase="training", iteration=step, step_number=step, metrics={},
                model_state=snapshot_of(model.state_dict()),
                model=model_record(params, [str(i) for i in range(10)]),
                optimizer_state=optimizer_snapshot_of(opt.state_dict()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_for_training()  # as a training job does (see malloc.py)
    model, opt, params = model_and_optimizer(args.architecture)
    root = Path(tempfile.mkdtemp())
    store = CheckpointStore(root / "checkpoints", "bench")
    store.open_for_writing()
    commits = BackgroundCommits()
    synchronous, background, back_to_back, writes = [], [], [], []
    try:
        for i in range(args.repeats):
            started = time.perf_counter()  # synchronous: training waits for everything
            store.commit(**snapshot(store, model, opt, params, 3 * i))
            synchronous.append(time.perf_counter() - started)

            started = time.perf_counter()  # background: training waits for the snapshot
            s = snapshot(store, model, opt, params, 3 * i + 1)
            commits.submit(lambda s=s: store.commit(**s))
            background.append(time.perf_counter() - started)
            commits.wait()  # an iteration longer than a commit
            writes.append(time.perf_counter() - started)

            s = snapshot(store, model, opt, params, 3 * i + 2)
            commits.submit(lambda s=s: store.commit(**s))
            started = time.perf_counter()  # iterations shorter than commits: the next waits
            s = snapshot(store, model, opt, params, 3 * i + 3)
            commits.submit(lambda s=s: store.commit(**s))
            back_to_back.append(time.perf_counter() - started)
            commits.wait()
            for c in store.all():
                store.delete(c.id)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    rows = [[name, 1000 * min(t), 1000 * median(t)] for name, t in (
        ("synchronous commit", synchronous), ("background: snapshot only", background),
        ("background: commit written", writes),
        ("background, iterations shorter than commits", back_to_back))]
    print(f"{args.architecture} + Adam, weights {size / 1e6:.0f} MB, {args.repeats} repeats")
    print_table(["blocked per commit", "best ms", "median ms"], rows)
    print_figures({"architecture": args.architecture,
                   "synchronous_ms": round(1000 * median(synchronous), 1),
                   "background_ms": round(1000 * median(background), 1),
                   "short_iterations_ms": round(1000 * median(back_to_back), 1),
                   "target_background_ms": 50})


if __name__ == "__main__":
    main()
