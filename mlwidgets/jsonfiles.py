"""Bounded JSON and self-digesting records: how every record of a session is spelled.

`parse_json` refuses NaN, infinity (`1e400` included) and nesting deeper than MAX_DEPTH,
whatever the file claims. `encode_record` writes a record that ends with
`"digest": "sha256:<hex>"`, the sha256 of the file's own bytes with the hex spelled as
zeros, so `decode_record` detects a change to any byte; a record without a digest (written
by an older version) is read as it is. The digest is unkeyed: it catches damage, not a
sender who recomputes it (see README, "Opening a session someone sent you").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from pydantic_core import from_json

from .errors import MlwidgetsError, SessionError

MAX_DEPTH = 32  # nesting of any JSON value
DIGEST_KEY = "digest"
_ZERO_DIGEST = "sha256:" + "0" * 64
_DIGEST_TAIL = re.compile(rb'"digest": "sha256:([0-9a-f]{64})"\n}\n\Z')


# -- bounded JSON --------------------------------------------------------------------------


def parse_json(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError) -> Any:
    """JSON from bytes: no NaN or infinity, nesting at most MAX_DEPTH, else `error`."""
    try:
        value = from_json(data, allow_inf_nan=False)
    except ValueError as e:
        raise error("not valid JSON", where, f"{e}; the file is damaged") from None
    problem = _json_problem(value)
    if problem:
        raise error(f"{problem} in its JSON", where, "the file is damaged") from None
    return value


def _json_problem(value: Any, depth: int = 0) -> str | None:
    if depth > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH}"
    if isinstance(value, float) and not math.isfinite(value):
        return "a number out of range"
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        if isinstance(item, (dict, list, float)):
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
    return None


def encode_record(record: dict[str, Any]) -> bytes:
    """A record as the bytes of its file, ending with the digest of those bytes."""
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}
    text = json.dumps({**body, DIGEST_KEY: _ZERO_DIGEST}, indent=2, allow_nan=False) + "\n"
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest().encode()
    at = data.rindex(_ZERO_DIGEST.encode()) + len("sha256:")  # the last key: the digest's
    return data[:at] + digest + data[at + 64:]


def decode_record(data: bytes, where: Any, error: type[MlwidgetsError] = SessionError
                  ) -> dict[str, Any]:
    """A record from its file's bytes, its digest checked when it has one."""
    value = parse_json(data, where, error)
    if not isinstance(value, dict):
        raise error(f"holds a JSON {type(value).__name__}, not a record", where,
                    "the file is damaged")
    if DIGEST_KEY in value:
        tail = _DIGEST_TAIL.search(data)
        if tail is None or f"sha256:{tail.group(1).decode()}" != value[DIGEST_KEY]:
            raise error("its digest is not where it was written", where, "the file is damaged")
        start, end = tail.span(1)
        unsigned = data[:start] + b"0" * 64 + data[end:]
        if hashlib.sha256(unsigned).hexdigest() != tail.group(1).decode():
            raise error("its bytes do not match its digest", where,
                        "the file was changed or damaged after it was written")
        del value[DIGEST_KEY]
    return value
