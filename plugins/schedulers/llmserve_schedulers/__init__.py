"""Scheduling policies for llmserve, contributed through ``llmserve_scheduling_policies``."""
