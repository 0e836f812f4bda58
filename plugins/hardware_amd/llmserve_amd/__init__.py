"""llmserve-amd: the ROCm platform plugin (AMD Instinct GPUs)."""

__version__ = "0.1.0"
