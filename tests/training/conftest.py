"""Helpers for the training tests (the mednist_small fixture lives in tests/conftest.py)."""


def tiny_config(data_path, **over):
    from medsynth.config import resolve_config

    base = {"data.path": str(data_path), "data.image_size": [32, 32], "data.workers": 1,
            "data.intensity.mode": "window", "data.intensity.window": [0, 255],
            "model.latent_dim": 16, "model.width": 8, "train.batch_size": 8, "train.steps": 4,
            "train.grid_every": 1000, "train.checkpoint_every": 1000}
    base.update(over)
    return resolve_config(None, base)
