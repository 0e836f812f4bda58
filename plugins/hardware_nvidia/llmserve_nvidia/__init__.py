"""llmserve-nvidia: the CUDA platform plugin."""

__version__ = "0.1.0"
