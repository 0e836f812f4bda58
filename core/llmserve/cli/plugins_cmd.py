"""``llmserve plugins``: what is installed, its version, and what each plugin provides."""

from __future__ import annotations

import argparse
import json

from llmserve.cli.command import CliCommand

_PREFIX = "llmserve_"


class PluginsCommand(CliCommand):
    name = "plugins"
    help = "List installed plugins, their versions and what each provides."
    description = (
        "List every registered plugin (the core's defaults and the entry points of the group "
        "'llmserve'), its version, the range of plugin API versions it declares "
        "(LLMSERVE_PLUGIN_API), the hooks it implements and the names it contributes, then "
        "the plugins that were skipped and why. LLMSERVE_PLUGINS limits which load."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(self, args: argparse.Namespace) -> int:
        from llmserve.plugins import get_plugin_manager, plugin_infos

        pm = getattr(args, "plugin_manager", None) or get_plugin_manager()
        infos = plugin_infos(pm)
        if args.json:
            print(json.dumps({"plugins": [info.to_dict() for info in infos],
                              "skipped": dict(pm.skipped)}, indent=2))
            return 0
        for info in infos:
            origin = f" ({info.distribution})" if info.distribution else ""
            # The core's defaults are the running plugin API by definition.
            api = ("" if pm.is_default_plugin(info.name)
                   else f", plugin API {info.plugin_api or 'undeclared'}")
            print(f"{info.name} {info.version or 'unknown'}{origin}{api}")
            for hook in info.hooks:
                short = hook.removeprefix(_PREFIX)
                if hook in info.errors:
                    print(f"  {short}: error: {info.errors[hook]}")
                elif hook in info.provides:
                    print(f"  {short}: {', '.join(info.provides[hook]) or '(none)'}")
                else:
                    print(f"  {short}")
        if pm.skipped:
            print("\nskipped:")
            for name, reason in pm.skipped.items():
                print(f"  {name}: {reason}")
        return 0


COMMAND = PluginsCommand()
