"""The ``llmserve`` command line: subcommands come from the ``llmserve_cli_commands`` hook."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser(pm) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per contributed command."""
    from llmserve import __version__
    from llmserve.plugins import collect_list

    parser = argparse.ArgumentParser(
        prog="llmserve",
        description="llmserve: LLM inference and serving engine. "
                    "Subcommands are contributed by plugins.")
    parser.add_argument("--version", action="version", version=f"llmserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = collect_list(pm, "llmserve_cli_commands", key=lambda command: command.name)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help,
                                    description=command.description or command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmserve`` console script; returns the exit status."""
    from llmserve.logger import configure_default_logging
    from llmserve.plugins import get_plugin_manager

    configure_default_logging()
    pm = get_plugin_manager()
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    args.plugin_manager = pm
    try:
        return int(command.run(args) or 0)
    except BrokenPipeError:
        # `llmserve plugins | head`: the reader left. Point stdout at devnull so the flush at
        # exit does not raise again (the recipe of Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
