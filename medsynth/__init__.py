"""medsynth: trustworthy synthetic X-ray and MRI from MONAI-based generative models."""

__version__ = "0.1.0"
