"""Fidelity metrics: Inception features (``features``), FID (``fid``) and KID (``kid``).

Import the submodules directly (``from medsynth.metrics.fid import fid_from_features``); nothing is
imported here so that ``import medsynth.metrics`` stays cheap.
"""
