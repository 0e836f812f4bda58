"""With ``LLMSERVE_SSM_REPORT_ERRORS=1``, print the largest error each comparison saw."""

from __future__ import annotations

import os


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("LLMSERVE_SSM_REPORT_ERRORS") != "1":
        return
    from ssm_testutil import MAX_ERRORS

    terminalreporter.section("llmserve-ssm max abs errors")
    for what, error in sorted(MAX_ERRORS.items()):
        terminalreporter.write_line(f"{error:10.3g}  {what}")
