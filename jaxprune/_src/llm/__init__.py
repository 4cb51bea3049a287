"""Calibration-based one-shot pruning of large pretrained models (SparseGPT, Wanda, depth and structured)."""
