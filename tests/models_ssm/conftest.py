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


import pytest  # noqa: E402
from model_testutil import TINY_CHECKPOINTS, tiny_mamba  # noqa: E402


@pytest.fixture(scope="session", params=sorted(TINY_CHECKPOINTS))
def arch(request):
    """Each architecture of the plugin, by its HF name."""
    return request.param


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny checkpoints, built once per session on first use."""
    built: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in built:
            build = TINY_CHECKPOINTS[arch][0]
            built[arch] = build(tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def arch_dir(arch, tiny_dirs):
    return tiny_dirs(arch)


@pytest.fixture(scope="session")
def mamba_dir(tiny_dirs):
    return tiny_dirs("MambaForCausalLM")


@pytest.fixture(scope="session")
def mamba2_dir(tiny_dirs):
    return tiny_dirs("Mamba2ForCausalLM")


@pytest.fixture(scope="session")
def mamba_variant_dir(tmp_path_factory):
    """The Mamba1 config switches the main checkpoint leaves at their defaults."""
    return tiny_mamba(tmp_path_factory.mktemp("mamba_variant"), tie_word_embeddings=False,
                      use_bias=True, use_conv_bias=False, time_step_rank=6,
                      residual_in_fp32=False)
