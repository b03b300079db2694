#!/usr/bin/env bash
# The CUDA checks and GPU figures in one run, for a CUDA machine: the CUDA-only tests, then the
# selection and prefill benchmarks on the device, figures written under $OUT (default ./device-out).
# Each step runs even if one before it failed. Not yet timed on a GPU: run it under a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
python - <<'PY' | tee "$out/device.txt"
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
python -m pytest -q -m cuda 2>&1 | tail -15 | tee "$out/cuda-tests.txt"
python -m benchmarks.selection --device cuda --repeats 11 > "$out/selection-cuda.md" 2>&1
python -m benchmarks.prefill --device cuda --dtype bfloat16 --layers 4 --json "$out/prefill-7b-shaped.json" \
    > "$out/prefill-7b-shaped.md" 2>&1
for family in llava_next llava_onevision qwen2_5_vl; do
    python -m benchmarks.prefill --family "$family" --device cuda --json "$out/prefill-$family.json" \
        > "$out/prefill-$family.md" 2>&1
done
ls -l "$out"
