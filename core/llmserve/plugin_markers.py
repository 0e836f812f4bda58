"""The pluggy markers of the project ``llmserve``: the one module both sides import.

``llmserve.hookspecs`` marks specifications with ``hookspec``; plugins mark implementations
with ``hookimpl`` (re-exported as ``llmserve.hookimpl``). Keeping the markers apart from the
plugin manager lets ``llmserve.plugins`` import the specifications without a cycle.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "llmserve"

#: Marks hook specifications (used by ``llmserve.hookspecs``).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks hook implementations in plugins: ``@hookimpl def llmserve_platforms(): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
