"""Checkpoints: atomic writes, last-K retention, and safe loading (``weights_only=True``).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects), so
``torch.load(..., weights_only=True)`` reads it, and a file carrying anything else is refused.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import torch

from medsynth.runs import atomic_write_bytes

FORMAT = "medsynth-checkpoint"
FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or from another model."""


def save_checkpoint(path, state: dict) -> str:
    """Write ``state`` atomically; returns the file's SHA-256."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path, map_location="cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(f"{p}: refused: the file carries pickled objects that a safe load does not "
                              f"run ({first[:200]})") from None
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, KeyError, EOFError...)
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt?): "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a medsynth checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p}: written by a newer medsynth (format {state['format_version']}); upgrade")
    return state


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_checkpoints(folder) -> list[Path]:
    """``step_*.pt`` files in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder) -> Path | None:
    files = step_checkpoints(folder)
    return files[-1] if files else None


def prune(folder, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (best.pt is a separate file, kept)."""
    for p in step_checkpoints(folder)[:-keep_last]:
        p.unlink(missing_ok=True)
