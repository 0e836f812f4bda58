"""The layers state-space models are built from: the Mamba mixers, the gated RMSNorm, and the
per-step view of the engine's state slots they share."""
