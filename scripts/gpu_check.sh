#!/usr/bin/env bash
# One command on a machine with one CUDA GPU (about 5 minutes): the GPU tests, then exact and
# fast mode against the reference in one process, written to docs/gpu.md and appended to
# docs/benchmarks.jsonl:
#   - vit_h with random weights (the largest model's encoder and decoder; its random masks
#     fall below the thresholds, so the full-resolution stage is not measured there);
#   - MobileSAM with its checkpoint, when AMG_TEST_CHECKPOINT names it, at the defaults and
#     at crop_n_layers 1 (every stage, on real masks).
#   AMG_TEST_IMAGES=photos/ AMG_TEST_CHECKPOINT=mobile_sam.pt scripts/gpu_check.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python}
IMAGES=${AMG_TEST_IMAGES:-docs/images}

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
timeout 180 "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py

bench() {
    timeout 150 "$PYTHON" -m amg_lightning.bench.cli generate --device cuda --fast \
        --images "$IMAGES" --rounds 3 --reference-rounds 2 \
        --json docs/benchmarks.jsonl --markdown docs/gpu.md "$@"
}
{
    echo "# GPU benchmark"
    echo
    echo "Written by scripts/gpu_check.sh: amg-bench generate, exact and fast (bfloat16 mask"
    echo "upscaler) mode against the reference in one process."
    echo
} > docs/gpu.md
bench --model-type vit_h --max-images 1 --pred-iou-thresh 0.5 --stability-score-thresh 0.8
if [[ -n ${AMG_TEST_CHECKPOINT:-} ]]; then
    bench --model-type vit_t --checkpoint "$AMG_TEST_CHECKPOINT" --max-images 3
    bench --model-type vit_t --checkpoint "$AMG_TEST_CHECKPOINT" --max-images 1 --crop-n-layers 1
fi
echo "wrote docs/gpu.md"
