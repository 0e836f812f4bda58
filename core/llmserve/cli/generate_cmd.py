"""``llmserve generate``: complete prompts given on the command line."""

from __future__ import annotations

import argparse
import json
import sys

from llmserve.cli.command import CliCommand
from llmserve.cli.engine_args import add_engine_args, engine_args_from


class GenerateCommand(CliCommand):
    name = "generate"
    help = "Complete one or more prompts with a model (default: the embedded model)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("prompts", nargs="*", help="prompts; read from stdin if none")
        parser.add_argument("--model", default=None, help="HF model directory")
        parser.add_argument("--max-tokens", type=int, default=64)
        parser.add_argument("--temperature", type=float, default=None)
        parser.add_argument("--top-p", type=float, default=None)
        parser.add_argument("--top-k", type=int, default=None)
        parser.add_argument("--n", type=int, default=1)
        parser.add_argument("--stop", action="append", default=None)
        parser.add_argument("--chat", action="store_true",
                            help="treat each prompt as a user message under the chat template")
        parser.add_argument("--json", action="store_true", help="print JSON lines")
        add_engine_args(parser)

    def run(self, args: argparse.Namespace) -> int:
        from llmserve.llm import LLM

        prompts = args.prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not prompts:
            print("llmserve generate: no prompts given", file=sys.stderr)
            return 2
        engine_args = engine_args_from(args, args.model)
        llm = LLM(**engine_args.model_dump(exclude_none=False))
        overrides = {k: v for k, v in dict(temperature=args.temperature, top_p=args.top_p,
                                          top_k=args.top_k).items() if v is not None}
        params = llm.get_default_sampling_params().model_copy(
            update=dict(max_tokens=args.max_tokens, n=args.n, stop=args.stop, **overrides))
        params = type(params).model_validate(params.model_dump())
        if args.chat:
            outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params,
                               use_tqdm=False)
        else:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        for prompt, out in zip(prompts, outputs):
            for c in out.outputs:
                if args.json:
                    print(json.dumps({"prompt": prompt, "index": c.index, "text": c.text,
                                      "token_ids": c.token_ids,
                                      "finish_reason": c.finish_reason}))
                else:
                    print(f"{prompt}{c.text}")
        return 0


COMMAND = GenerateCommand()
