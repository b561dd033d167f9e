"""medsynth: trustworthy synthetic X-ray and MRI from MONAI-based generative models."""

__version__ = "0.1.0"


def __getattr__(name):
    # the Python API, imported lazily so that `medsynth --help` stays fast
    if name == "load_generator":
        from medsynth.sampling import load_generator

        return load_generator
    if name in ("SyntheticDataset", "mix", "balance"):
        import medsynth.augment

        return getattr(medsynth.augment, name)
    raise AttributeError(f"module 'medsynth' has no attribute {name!r}")
