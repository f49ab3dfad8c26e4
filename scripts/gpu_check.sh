#!/usr/bin/env bash
# One command on a machine with one CUDA GPU (about 8 minutes): the GPU tests, then a
# ViT-H-sized benchmark (random weights: timing and parity need no trained weights), exact
# and fast mode against the reference, written to docs/gpu.md and docs/benchmarks.jsonl.
#   scripts/gpu_check.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python}
IMAGES=${AMG_TEST_IMAGES:-docs/images}

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
timeout 180 "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py

{
    echo "# GPU benchmark"
    echo
    echo "Written by scripts/gpu_check.sh: amg-bench generate, vit_h with random weights, one"
    echo "image, exact and fast (bfloat16 upscaler) mode against the reference in one process."
    echo
} > docs/gpu.md
timeout 300 "$PYTHON" -m amg_lightning.bench.cli generate --model-type vit_h --device cuda \
    --images "$IMAGES" --max-images 1 --pred-iou-thresh 0.5 --stability-score-thresh 0.8 \
    --fast --rounds 2 --reference-rounds 1 --json docs/benchmarks.jsonl --markdown docs/gpu.md
echo "wrote docs/gpu.md"
