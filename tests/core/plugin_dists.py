"""Throwaway plugin distributions installed in a private virtual environment.

The environment is layered over this interpreter's site-packages, so it sees llmserve and its
installed plugins plus the test distributions; fresh interpreters started in it read the
entry points at start-up, as a real installation does. Installing into the shared environment
instead would show half-installed test plugins to anyone else running llmserve.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
requires-python = ">=3.10"

[project.entry-points.llmserve]
{entry_points}

[tool.setuptools]
packages = ["{package}"]
"""

def write_dist(root: Path, dist: str, version: str, modules: dict[str, str]) -> Path:
    package = dist.replace("-", "_")
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / package / f"{module}.py").write_text(source)
    entry_points = "\n".join(f'{name} = "{package}.{name}"' for name in modules)
    (root / "pyproject.toml").write_text(PYPROJECT.format(
        dist=dist, version=version, entry_points=entry_points, package=package))
    return root


class PluginEnv:
    """A virtual environment that sees this interpreter's packages plus the test plugins."""

    def __init__(self, root: Path):
        self.root = root
        bin_dir = "Scripts" if os.name == "nt" else "bin"
        self.python = str(root / bin_dir / ("python.exe" if os.name == "nt" else "python"))

    def run(self, args: list[str], plugins: str | None = None, trace: bool = False,
            check: bool = True) -> subprocess.CompletedProcess:
        # PYTHONPATH is kept: where it puts a checkout's sources first, those are what
        # the test runs, not the copy the site directories' editable installs point to.
        env = {k: v for k, v in os.environ.items()
               if k not in ("LLMSERVE_PLUGINS", "LLMSERVE_TRACE_HOOKS")}
        if plugins is not None:
            env["LLMSERVE_PLUGINS"] = plugins
        if trace:
            env["LLMSERVE_TRACE_HOOKS"] = "1"
        proc = subprocess.run([self.python, *args], env=env, capture_output=True, text=True,
                              timeout=300)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def run_script(self, source: str, **kwargs) -> tuple[dict, str]:
        proc = self.run(["-c", textwrap.dedent(source)], **kwargs)
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def make_plugin_env(root: Path, dists: list[Path]) -> PluginEnv:
    """A virtual environment at ``root`` with the distributions ``dists`` installed editable
    (offline: no dependencies, no build isolation)."""
    env = PluginEnv(root)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env.root)], check=True)
    # Layer the venv over every site directory of this interpreter (which may itself be a
    # venv): addsitedir also runs their .pth files, which is what editable installs rely on.
    site_dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()]
                 if os.path.isdir(d)]
    venv_site = subprocess.run(
        [env.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(venv_site, "_llmserve_parent_site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site_dirs) + "\n")
    install = ["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check"]
    env.run([*install, *(arg for dist in dists for arg in ("-e", str(dist)))])
    return env
