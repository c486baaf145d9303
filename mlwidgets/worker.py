"""The child process of `runner="process"`: train one session, then exit.

`python -m mlwidgets.worker SESSION_DIR [--data-root DIR]`. It prints only errors (into the
session's train.log, where the parent sends them); SIGTERM pauses with a checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from .session import TrainingSession


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlwidgets.worker")
    parser.add_argument("session_dir")
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    session = TrainingSession.restore(args.session_dir, args.data_root)
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
