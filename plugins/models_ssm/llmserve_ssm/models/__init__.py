"""Model classes contributed through ``llmserve_model_architectures``, one module per family."""
