"""Run-directory paths, atomic file writes and provenance shared by every command."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_path(path: Path) -> None:
    """Delete a folder tree, a file or a link (the link, not what it points to); nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def put_back(aside: Path, target: Path) -> None:
    """Return a folder that was moved aside (renamed, in the same parent folder) to ``target``, replacing
    whatever is there now: how ``train --overwrite`` and ``export --overwrite`` undo a replacement."""
    remove_path(target)
    aside.rename(target)


def prepare_run_data(cfg, run_dir: Path, progress=None, write: bool = True):
    """Write the resolved config, build or open the tensor cache, and write or reuse split.json.

    ``write=False`` (ranks other than 0 of a distributed run) only reads: the split must exist."""
    from medsynth.config import dump_config
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split

    split_path = run_dir / "split.json"
    split = Split.load(split_path) if split_path.is_file() else None
    bundle = build_dataset(cfg.data, split=split, progress=progress)
    if not write:
        return bundle
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    if split is None:
        bundle.split.save(split_path)
    return bundle


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line (metrics.jsonl), creating the file when needed."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
