#!/usr/bin/env bash
# One command on a machine with one CUDA GPU (at most 8 minutes; each part has a time limit), writing docs/gpu.md and
# appending rows to docs/benchmarks.jsonl:
#   (a, b) the GPU tests: the device post-processing bit-equal to the reference's own on
#          captured CUDA decoder outputs, and the syncs per image;
#   (c)    exact mode against the reference in one process, TF32 off for both: MobileSAM on
#          3 photos at the defaults and one at crop_n_layers 1; then fast mode (the bf16
#          upscaler, and the same with TF32 products) against exact mode on every photo of
#          AMG_TEST_IMAGES, per photo: mean matched IoU and mask count mismatch;
#   (d)    throughput through the whole pipeline (predict.py) over one shard of 66 photos
#          (each photo as is, flipped, turned and cut): images/s and the GPU's busy fraction,
#          for vit_t at the defaults and at crop_n_layers 1, and vit_h with random weights at
#          thresholds of 0 (so masks reach every stage);
#   (e)    SAM 2.1 hiera_l with sharpened random weights against SAM2AutomaticMaskGenerator,
#          at SAM 2's defaults on one photo (skipped with a message when sam2 is not installed).
#   AMG_TEST_IMAGES=photos/ AMG_TEST_CHECKPOINT=mobile_sam.pt scripts/gpu_check.sh [PYTHON]
# On a machine whose Python lacks the project's packages, install them as wheels first:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=$PWD:/tmp/site
# (.whl/ holding the sam2, iopath and portalocker wheels too for step (e)).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python}
IMAGES=${AMG_TEST_IMAGES:?AMG_TEST_IMAGES must name a folder of photos}
CHECKPOINT=${AMG_TEST_CHECKPOINT:?AMG_TEST_CHECKPOINT must name mobile_sam.pt}
WORK=$(mktemp -d)
status=0

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
step() {  # step SECONDS COMMAND...: a part that overruns is cut, and the rest still runs
    local limit=$1; shift
    echo "== $*"
    timeout "$limit" bash -c '"$@"' step "$@" || { echo "!! failed or cut after ${limit}s: $*"; status=1; }
}

step 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py

{
    echo "# GPU benchmark"
    echo
    echo "Written by scripts/gpu_check.sh on one CUDA GPU. \`generate\` rows: exact mode against"
    echo "the reference in one process, TF32 off for both (the definition of exact on CUDA)."
    echo "\`pipeline\` rows: the whole prediction (predict.py) over one shard, with the GPU's busy"
    echo "fraction sampled by nvidia-smi. Raw rows: docs/benchmarks.jsonl (device \`cuda\`)."
    echo
} > docs/gpu.md
export PYTHON IMAGES CHECKPOINT WORK
generate() {
    "$PYTHON" -m amg_lightning.bench.cli generate --device cuda --images "$IMAGES" \
        --model-type vit_t --checkpoint "$CHECKPOINT" --rounds 2 --reference-rounds 1 \
        --json docs/benchmarks.jsonl --markdown docs/gpu.md "$@"
}
export -f generate
step 80 generate --max-images 3
step 55 generate --max-images 1 --crop-n-layers 1
fast_per_photo() {
    generate --against exact --fast --tf32 --rounds 1 &&
    "$PYTHON" - docs/benchmarks.jsonl >>docs/gpu.md <<'PY'
"""Per photo, fast mode against exact mode: the last run's rows of docs/benchmarks.jsonl."""
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
fast = [r for r in rows if r.get("baseline") == "ours" and r["mode"].startswith("ours_fast")][-2:]
print("\n| photo | mode | masks (exact / fast) | mean matched IoU | count mismatch |")
print("|---|---|---|---:|---:|")
for row in fast:
    for image in row["per_image"]:
        print(f"| {image['image']} | {row['mode']} ({row['precision']}) | "
              f"{image['n_reference']} / {image['n_ours']} | {image['mean_iou']:.4f} | "
              f"{image['count_mismatch']:.3f} |")
print()
PY
}
export -f fast_per_photo
step 40 fast_per_photo

"$PYTHON" - "$IMAGES" "$WORK/photos" <<'EOF'
"""66 photos from the given ones: each as is, mirrored, flipped, turned, transposed, cut."""
import sys
from pathlib import Path
from PIL import Image, ImageOps
source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
variants = {
    "as-is": lambda im: im, "mirrored": ImageOps.mirror, "flipped": ImageOps.flip,
    "turned": lambda im: im.rotate(180), "transposed": lambda im: im.transpose(Image.TRANSPOSE),
    "cut": lambda im: im.crop((im.width // 8, im.height // 8, im.width * 7 // 8, im.height * 7 // 8)),
}
photos = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
for number in range(66):
    photo = photos[number % len(photos)]
    name = list(variants)[number // len(photos) % len(variants)]
    image = variants[name](ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
    image.save(out / f"{photo.stem}-{name}-{number:02d}.jpg", quality=95)
EOF
"$PYTHON" -m amg_lightning.data.shards "$WORK/photos" --output "$WORK/shards" >/dev/null
"$PYTHON" -c "
import torch
from amg_lightning.core.models import build_sam
torch.save(build_sam('vit_h').state_dict(), '$WORK/vit_h_random.pt')"

pipeline() {
    "$PYTHON" -m amg_lightning.bench.cli pipeline "$WORK/shards" --device cuda --rounds 1 \
        --num-workers 8 --json docs/benchmarks.jsonl --markdown docs/gpu.md "$@"
}
export -f pipeline
step 45 pipeline --model-type vit_t --checkpoint "$CHECKPOINT"
step 85 pipeline --model-type vit_t --checkpoint "$CHECKPOINT" --crop-n-layers 1
step 65 pipeline --model-type vit_h --checkpoint "$WORK/vit_h_random.pt" \
    --pred-iou-thresh 0 --stability-score-thresh 0
if "$PYTHON" -c "import sam2" 2>/dev/null; then
    # Random weights: no SAM 2 checkpoint is fetched here; sharpened so masks pass the filters.
    step 45 "$PYTHON" -m amg_lightning.bench.cli generate --device cuda --images "$IMAGES" \
        --max-images 1 --model-type sam2.1_hiera_l --sharpen --rounds 1 \
        --json docs/benchmarks.jsonl --markdown docs/gpu.md
else
    echo "== skipped: SAM 2.1 hiera_l against SAM2AutomaticMaskGenerator (import sam2 failed)"
fi
rm -rf "$WORK"
echo "wrote docs/gpu.md (status $status)"
exit $status
