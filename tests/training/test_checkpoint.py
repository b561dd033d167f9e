import pickle

import pytest
import torch

from medsynth.training.checkpoint import CheckpointError, load_checkpoint, prune, save_checkpoint, step_checkpoints


class Payload:
    """Would run code when unpickled by an unsafe loader."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_round_trip_and_atomic_file(tmp_path):
    sha = save_checkpoint(tmp_path / "c.pt", {"step": 3, "w": torch.arange(4.0), "cfg": {"a": [1, "x"]}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(4.0)) and state["cfg"] == {"a": [1, "x"]}
    assert len(sha) == 64 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_pickled_object_is_refused(tmp_path, capsys):
    torch.save({"format": "medsynth-checkpoint", "format_version": 1, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused: the file carries pickled objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump(Payload(), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert "pwned" not in capsys.readouterr().out


def test_truncated_corrupt_and_foreign_files(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 1, "w": torch.zeros(1000)})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "z.pt").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "z.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a medsynth checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_prune_keeps_the_newest(tmp_path):
    for s in (5, 10, 15, 20):
        save_checkpoint(tmp_path / f"step_{s:07d}.pt", {"step": s})
    (tmp_path / "best.pt").write_bytes(b"x")
    prune(tmp_path, 2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_0000015.pt", "step_0000020.pt"]
    assert (tmp_path / "best.pt").exists()
