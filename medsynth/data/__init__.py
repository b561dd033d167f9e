"""Data ingestion: readers -> sources -> transforms -> tensor cache.

``build_dataset(cfg)`` runs the whole chain for a :class:`~medsynth.config.DataConfig` and returns
everything training, evaluation and privacy need: the preprocessed images, the patient-level split,
item indices per split and the intensity mapping fitted on the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medsynth.config import DataConfig
from medsynth.data.cache import PreparedData, prepare_dataset
from medsynth.data.sources import DataError, Discovery, Split, discover, require_usable, split_by_patient
from medsynth.data.transforms import IntensityMapping, fit_intensity

__all__ = ["DataBundle", "CachedImageDataset", "DataError", "build_dataset", "discover_from_config"]


@dataclass
class DataBundle:
    discovery: Discovery
    prepared: PreparedData
    split: Split
    train_indices: np.ndarray
    holdout_indices: np.ndarray
    mapping: IntensityMapping

    @property
    def labels(self) -> list[str]:
        return self.prepared.labels


def discover_from_config(cfg: DataConfig) -> Discovery:
    disc = discover(cfg.path, manifest=cfg.manifest, layout=cfg.layout, labels=cfg.labels,
                    patient_pattern=cfg.patient_pattern)
    require_usable(disc)
    return disc


def build_dataset(cfg: DataConfig, split: Split | None = None, progress: bool | None = None) -> DataBundle:
    """Discover, preprocess (or open the cache), split by patient and fit the intensity mapping.

    Pass ``split`` (e.g. ``Split.load(run/'split.json')``) to reuse a run's split; records it names
    that no longer exist are ignored, and new records are not added to it.
    """
    disc = discover_from_config(cfg)
    prepared = prepare_dataset(disc, cfg, progress=progress)
    if split is None:
        usable = {it["record"] for it in prepared.items}
        split = split_by_patient([r for r in disc.records if r.key in usable], cfg.holdout_fraction,
                                 cfg.split_seed)
    train = prepared.indices(split.train)
    holdout = prepared.indices(split.holdout)
    if train.size == 0:
        raise DataError(f"{disc.root}: the training split is empty (holdout_fraction={cfg.holdout_fraction})")
    try:
        mapping = fit_intensity(cfg.intensity, prepared.images, train)
    except ValueError as e:
        raise DataError(f"{disc.root}: cannot fit the intensity mapping: {e}") from None
    return DataBundle(disc, prepared, split, train, holdout, mapping)


class CachedImageDataset(torch.utils.data.Dataset):
    """A map-style ``torch.utils.data.Dataset`` over prepared items: ``{"image", "label"}`` dicts.

    ``image`` is a (1, *size) float32 tensor in [-1, 1]; ``label`` the label index (-1 unlabelled).
    """

    def __init__(self, prepared: PreparedData, indices, mapping: IntensityMapping):
        self.prepared, self.indices, self.mapping = prepared, np.asarray(indices, dtype=np.int64), mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        img = torch.from_numpy(np.array(self.prepared.images[j], dtype=np.float32))[None]
        return {"image": self.mapping.forward(img), "label": int(self.prepared.label_index[j])}
