"""The unit the ``llmserve`` CLI is built from: one subcommand, contributed by a plugin."""

from __future__ import annotations

import argparse
import importlib
import logging

logger = logging.getLogger(__name__)


class CliCommand:
    """A subcommand of ``llmserve``, contributed through the ``llmserve_cli_commands`` hook.

    Subclass it, set ``name`` and ``help``, override ``add_arguments`` and ``run``::

        class Hello(CliCommand):
            name = "hello"
            help = "Print a greeting."

            def add_arguments(self, parser):
                parser.add_argument("--who", default="world")

            def run(self, args):
                print(f"hello {args.who}")
                return 0

    Every ``llmserve`` invocation builds the parser of every command, so keep heavy imports
    (torch, the engine) inside ``run``.
    """

    #: The word after ``llmserve`` on the command line.
    name: str = ""
    #: One line for ``llmserve --help``.
    help: str = ""
    #: Longer text for ``llmserve NAME --help``; defaults to ``help``.
    description: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to its subparser. Default: none."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the process exit status.

        ``args`` also carries ``plugin_manager``, the manager the CLI was built from, so a
        command that inspects plugins or builds an engine uses the same set of plugins.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def load_command(name: str, target: str) -> CliCommand | None:
    """Import the command ``name`` from ``target`` (``"module"`` or ``"module:attribute"``).

    The attribute defaults to ``COMMAND`` and may be an instance or a ``CliCommand`` subclass.
    A command that fails to load is logged and None is returned, so one broken command never
    takes the whole CLI (and ``llmserve plugins``, the tool to diagnose it) down with it.
    """
    module_name, _, attribute = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attribute or "COMMAND")
        command = obj() if isinstance(obj, type) else obj
        if not isinstance(command, CliCommand):
            raise TypeError(f"{target} is a {type(command).__name__}, not a CliCommand")
        if command.name != name:
            raise ValueError(f"{target} defines command {command.name!r}, expected {name!r}")
    except Exception as exc:
        logger.warning("llmserve command %r (%s) is unavailable: %s: %s",
                       name, target, type(exc).__name__, exc)
        return None
    return command
