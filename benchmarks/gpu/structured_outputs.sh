#!/usr/bin/env bash
# One GPU call for structured outputs: the kernels phase (the Triton token bitmask against the
# torch op), engine parity (the sampling path changed), then the overhead benchmark on the 8B
# shape with each backend and HF transformers as the peer. Run from the repository root on
# the lent machine, with .whl (xgrammar, apache-tvm-ffi, llguidance, pydantic) and
# .bench_tok/llama-8b (benchmarks/make_bench_tokenizer.py) carried.
set -uo pipefail
out="${OUT:-gpu_out}"
mkdir -p "$out/results"
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu/check_and_bench.py --phases kernels,parity,parity-async --out "$out" 2>&1 \
  | grep -v "^nanobind\|leaked" | tail -60
# The HF transformers peer (plain and with xgrammar's logits processor) runs after xgrammar.
for backend in xgrammar guidance; do
  peer=none; [ "$backend" = xgrammar ] && peer=hf
  python3 benchmarks/structured_outputs.py --shape llama-8b --tokenizer .bench_tok/llama-8b \
    --backend "$backend" --batch 64 --input-len 128 --output-len 128 --peer "$peer" \
    --results-dir "$out/results" 2>&1 | grep -v "^nanobind\|leaked\|INFO" | tail -8
done
