"""Hardware platforms. A platform is chosen through the ``llmserve_platforms`` hook."""

from llmserve.platforms.base import Platform

__all__ = ["Platform"]
