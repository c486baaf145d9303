"""Local servers the tests start (JupyterLab, Voilà, `make lab`): a free port, waiting
until one answers, stopping its process group, and the tail of its log for errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

# Between two readiness checks: jupyter_server prints its URL before it binds (the bind is
# a callback of its event loop) and logs nothing after, so answering is the only signal.
CHECK_INTERVAL = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(url: str, process: subprocess.Popen, log: Path,
                         timeout: float = 60, headers: dict | None = None) -> None:
    """Return once `url` answers over HTTP (any status); fail as soon as `process` exits
    (it is waited on between checks) or after `timeout` seconds, with its log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                        timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answered, with an error status: still up
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s:\n{tail(log)}")
        try:
            process.wait(CHECK_INTERVAL)
        except subprocess.TimeoutExpired:
            continue  # still starting
        raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")


def stop_process_group(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process's group (started with start_new_session), SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
