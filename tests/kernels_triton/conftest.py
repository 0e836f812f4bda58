"""The Triton tests run only in their own pytest processes, chosen by ``LLMSERVE_TRITON_TESTS``:

- ``interpret``: kernel numerics under the Triton interpreter. ``TRITON_INTERPRET=1`` is set
  here, at conftest import, before any test module imports a kernel (``triton.jit`` reads it
  when a kernel is defined). Runs ``test_triton_numerics_*.py`` and ``test_triton_plugin.py``.
- ``compile``: ahead-of-time compilation for sm_80 and sm_90 (the default tuning) and gfx942
  and gfx950 (the AMD plugin's tunings). The interpreter must be off. Runs
  ``test_triton_compile*.py``.

Unset (the main test run), nothing here is collected and triton is never imported.
See ``run_triton_tests.sh``.
"""

from __future__ import annotations

import os
import sys

import pytest

MODE = os.environ.get("LLMSERVE_TRITON_TESTS", "")

if MODE == "interpret":
    if "llmserve_triton.kernels.attention" in sys.modules:
        raise pytest.UsageError("Triton kernels were imported before TRITON_INTERPRET was set: "
                                "run tests/kernels_triton in its own pytest process")
    os.environ["TRITON_INTERPRET"] = "1"
    collect_ignore_glob = ["test_triton_compile*.py"]
elif MODE == "compile":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise pytest.UsageError("compile tests need TRITON_INTERPRET unset")
    collect_ignore_glob = ["test_triton_numerics*.py", "test_triton_plugin.py"]
elif MODE == "":
    collect_ignore_glob = ["test_*.py"]
else:
    raise pytest.UsageError(f"LLMSERVE_TRITON_TESTS must be 'interpret' or 'compile', "
                            f"got {MODE!r}")
