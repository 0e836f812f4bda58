"""The model runner: turns a scheduler output into one forward pass and sampled tokens."""
