"""Default logging: llmserve's INFO lines (KV capacity, graph capture, server URL) are shown
unless the application has configured logging itself."""

from __future__ import annotations

import logging
import os

#: Environment variable with the level of the ``llmserve`` logger (default INFO).
LEVEL_ENV = "LLMSERVE_LOGGING_LEVEL"


def configure_default_logging() -> None:
    """Give the ``llmserve`` logger a stderr handler, once, if nobody configured logging.

    Called by ``LLM`` and the CLI, never at import. An application (or pytest) that installed
    its own handlers keeps full control.
    """
    logger = logging.getLogger("llmserve")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s",
                                           "%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get(LEVEL_ENV, "INFO").upper())
    logger.propagate = False
