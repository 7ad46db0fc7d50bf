"""JSON from a user's file (manifest, sidecar, COCO annotations, a preprocessing spec): one clear error
when it cannot be read, is not JSON or nests too deeply for the parser, never a traceback."""

from __future__ import annotations

import json
import os

from edgekit.errors import InputError


def read_json(path: str | os.PathLike, error: type = InputError, prefix: str | None = None):
    """The JSON document in ``path``; raises ``error(f"{prefix}: why")`` (``prefix`` default:
    ``cannot read PATH``) when the file cannot be read, is not UTF-8 JSON or nests too deeply."""
    prefix = prefix or f"cannot read {path}"
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{prefix}: {exc}") from exc
    except RecursionError:
        raise error(f"{prefix}: nested too deeply") from None
