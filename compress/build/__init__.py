"""Build: make a candidate from a base model (quantization by any of the schemes, pruning,
distillation, per-layer sensitivity for mixed precision). Imports only the core.
"""
