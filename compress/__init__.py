"""compress: quantize or distill a model, then gate it on accuracy, speed, size and cost."""

__version__ = "0.1.0"
