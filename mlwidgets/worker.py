"""The training process of `runner="process"` and of data-parallel runs: train one session,
then exit.

`python -m mlwidgets.worker SESSION_DIR [--data-root DIR]`, alone or as each of N workers
started by torch's launcher (see distributed.py). Rank 0 (or the only worker) holds the
session's lock and writes it; the others train beside it. It prints only errors (into the
session's train.log, where the parent sends them); SIGTERM pauses with a checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from . import distributed
from .session import TrainingSession


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlwidgets.worker")
    parser.add_argument("session_dir")
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    distributed.init()
    session = TrainingSession.restore(args.session_dir, args.data_root)
    if not distributed.is_main():
        from .trainer import TrainingRun

        TrainingRun(session.record).run()  # rank 0's job writes; this worker only trains
        return 0
    job = session.start()
    signal.signal(signal.SIGTERM, lambda *_: job.pause())
    while not job.wait(0.5):  # a timed wait lets the signal handler run
        pass
    if job.error is not None:
        traceback.print_exception(job.error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
