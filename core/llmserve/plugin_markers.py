"""The pluggy markers of the project ``llmserve`` and the plugin API version: what both sides
of the plugin contract import.

``llmserve.hookspecs`` marks specifications with ``hookspec``; plugins mark implementations
with ``hookimpl`` (re-exported as ``llmserve.hookimpl``). Keeping the markers apart from the
plugin manager lets ``llmserve.plugins`` import the specifications without a cycle, and keeps
this module free of torch so that reading the version costs nothing.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "llmserve"

#: Version of the plugin API (the modules listed in ``llmserve.plugin_api``), versioned
#: semantically and independently of the package: the minor number grows when something is
#: added or deprecated, the major number when something deprecated is removed or a contract
#: changes incompatibly.
PLUGIN_API_VERSION = "1.8"

#: Module attribute of a plugin's entry-point module that declares the range of plugin API
#: versions it supports, as a PEP 440 specifier: ``LLMSERVE_PLUGIN_API = ">=1.0,<2"``.
PLUGIN_API_ATTRIBUTE = "LLMSERVE_PLUGIN_API"

#: Marks hook specifications (used by ``llmserve.hookspecs``).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks hook implementations in plugins: ``@hookimpl def llmserve_platforms(): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
