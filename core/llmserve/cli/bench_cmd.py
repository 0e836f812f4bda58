"""``llmserve bench latency|throughput|startup``: offline speed on a model directory or a named
shape, optionally with HF transformers measured in the same process on the same device.
``llmserve bench serve``: load on a running OpenAI-compatible server (``llmserve.bench.serve``).
"""

from __future__ import annotations

import argparse
import json
import sys

from llmserve.cli.command import CliCommand
from llmserve.cli.engine_args import add_engine_args, engine_args_from


class BenchCommand(CliCommand):
    name = "bench"
    help = ("Measure offline latency, throughput or start-up (llmserve, and HF transformers as "
            "the peer), or load a running OpenAI-compatible server (serve).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("kind", choices=["latency", "throughput", "startup", "serve"])
        parser.add_argument("--workload", default=None,
                            help="a standard workload (sets shape and lengths), e.g. latency-8b")
        parser.add_argument("--model", default=None, help="HF model directory")
        parser.add_argument("--shape", default=None, help="named shape with random weights")
        parser.add_argument("--num-prompts", type=int, default=None)
        parser.add_argument("--input-len", type=int, default=None)
        parser.add_argument("--output-len", type=int, default=None)
        parser.add_argument("--peer", choices=["none", "hf-generate", "hf-generate-batch"],
                            default="none",
                            help="also run HF transformers: static-batch generate, or its "
                                 "continuous batching (generate_batch, paged sdpa)")
        parser.add_argument("--peer-num-prompts", type=int, default=None,
                            help="prompts for the peer (default: the same as llmserve)")
        parser.add_argument("--hf-batch-size", type=int, default=32)
        parser.add_argument("--results-dir", default=None,
                            help="write one JSON file per engine here")
        serve = parser.add_argument_group(
            "serve", "bench serve: --num-prompts, --input-len and --output-len apply; "
            "--served-model-name is the model to ask for (default: the server's first), "
            "--tokenizer makes the random prompts (default: the embedded model's), --seed "
            "seeds them")
        serve.add_argument("--base-url", default="http://127.0.0.1:8000",
                           help="the server (default: http://127.0.0.1:8000)")
        serve.add_argument("--endpoint", default="/v1/completions",
                           choices=["/v1/completions", "/v1/chat/completions"])
        serve.add_argument("--request-rate", type=float, default=float("inf"),
                           help="requests per second, Poisson arrivals (default: inf, all "
                                "at once)")
        serve.add_argument("--max-concurrency", type=int, default=None,
                           help="at most this many requests in flight")
        serve.add_argument("--range-ratio", type=float, default=0.0,
                           help="lengths uniform in len * [1 - r, 1 + r] (default 0: fixed)")
        serve.add_argument("--api-key", default=None, help="bearer key for the server")
        serve.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction,
                           default=True, help="ask for exactly --output-len tokens (a vLLM "
                                              "extra; --no-ignore-eos for other servers)")
        serve.add_argument("--label", default="llmserve",
                           help="the engine name written in the results (default: llmserve)")
        add_engine_args(parser)

    def run(self, args: argparse.Namespace) -> int:
        if args.kind == "serve":
            return _run_serve(args)
        import torch

        from llmserve.bench.offline import (build_hf_model, random_prompts, run_hf_generate,
                                            run_hf_generate_batch, run_llmserve)
        from llmserve.bench.results import make_result, write_result
        from llmserve.bench.shapes import WORKLOADS, Workload, shape_dir
        from llmserve.llm import LLM
        from llmserve.models.loader import read_hf_config

        wl = WORKLOADS.get(args.workload) if args.workload else None
        if args.workload and wl is None:
            print(f"unknown workload {args.workload!r}; known: {sorted(WORKLOADS)}",
                  file=sys.stderr)
            return 2
        wl = wl or Workload(args.shape or "tiny", args.kind, 1 if args.kind == "latency" else 64,
                            128, 128 if args.kind == "latency" else 32)
        num = args.num_prompts or wl.num_prompts
        in_len, out_len = args.input_len or wl.input_len, args.output_len or wl.output_len
        shape = None if args.model else (args.shape or wl.shape)
        model_dir = args.model or shape_dir(shape)
        engine_args = engine_args_from(args, model_dir)
        updates = {"max_model_len": engine_args.max_model_len or in_len + out_len + 16}
        if shape:
            updates.update(load_format="dummy", skip_tokenizer_init=True)
        engine_args = engine_args.model_copy(update=updates)
        if args.kind == "startup":
            from llmserve.bench import startup

            result = make_result(args.workload or f"startup-{shape or 'model'}", "llmserve",
                                 "cuda" if torch.cuda.is_available() else "cpu",
                                 startup.run(engine_args.model_dump()))
            print(json.dumps(result))
            if args.results_dir:
                write_result(result, args.results_dir)
            return 0
        llm = LLM(**engine_args.model_dump())
        core = llm.llm_engine.core
        prompts = random_prompts(num, in_len, llm.llm_engine.vocab_size)
        name = args.workload or f"{args.kind}-{shape or 'model'}"

        def report(result: dict) -> None:
            print(json.dumps(result), flush=True)
            if args.results_dir:
                write_result(result, args.results_dir)

        figures = {**run_llmserve(llm, prompts, out_len, args.kind),
                   "startup_s": round(core.startup_s, 3)}
        spec = core.resolved.config.speculative
        if spec is not None:
            # Counted over the whole run, warm-up and repeats included.
            figures["speculative"] = {"method": spec.method, "k": spec.num_speculative_tokens,
                                      **core.scheduler.spec_stats.summary()}
        report(make_result(name, "llmserve", core.device.type, figures))
        if args.peer != "none":
            device = core.device.type
            dtype = core.resolved.torch_dtype
            del llm, core
            if device == "cuda":
                torch.cuda.empty_cache()
            cfg = dict(read_hf_config(model_dir), _shape=bool(shape))
            peer_prompts = prompts[:args.peer_num_prompts or num]
            if args.peer == "hf-generate":
                model = build_hf_model(cfg, model_dir, dtype, device)
                batch = 1 if args.kind == "latency" else args.hf_batch_size
                figures = {**run_hf_generate(model, peer_prompts, out_len, args.kind, batch),
                           "hf_batch_size": batch}
            else:
                model = build_hf_model(cfg, model_dir, dtype, device, "paged|sdpa")
                figures = run_hf_generate_batch(model, peer_prompts, out_len)
            report(make_result(name, args.peer, device, figures))
        return 0


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from llmserve.bench import serve
    from llmserve.bench.results import make_result, write_result
    from llmserve.engine.resolver import resolve_model_path
    from llmserve.tokenizer import load_tokenizer

    num = args.num_prompts or 100
    in_len, out_len = args.input_len or 128, args.output_len or 64
    seed = args.seed if args.seed is not None else 0
    tokenizer = load_tokenizer(args.tokenizer or resolve_model_path(None))
    prompts = serve.random_prompts(tokenizer, num, in_len, args.range_ratio, seed)
    out_lens = serve.output_lengths(num, out_len, args.range_ratio, seed)
    figures = asyncio.run(serve.run(
        args.base_url, args.served_model_name, args.endpoint, prompts, out_lens,
        args.request_rate, args.max_concurrency, args.api_key, args.ignore_eos, seed))
    print(serve.format_report(figures), file=sys.stderr)
    result = make_result(args.workload or f"serve-{in_len}-{out_len}", args.label, "cpu", figures)
    result["device"] = f"server at {args.base_url}"
    print(json.dumps(result))
    if args.results_dir:
        write_result(result, args.results_dir)
    return 0 if figures["completed"] else 1


COMMAND = BenchCommand()
