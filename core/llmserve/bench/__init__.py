"""``llmserve bench``: standard model shapes, offline workloads and result files."""
