"""Score a prediction run's masks against COCO-style ground truth, class-agnostic."""

from __future__ import annotations

import argparse
import json

from amg_lightning.evaluation import add_scores_to_summary, evaluate_output_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", help="a prediction run's output_dir (RLE shards)")
    parser.add_argument("gt_json", help="COCO instances json (polygon or RLE segmentations)")
    parser.add_argument(
        "--update-summary",
        action="store_true",
        help='store the scores under "eval" in OUTPUT_DIR/summary.json, for sweep reports',
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    scores = evaluate_output_dir(args.output_dir, args.gt_json)
    print(json.dumps(scores, indent=2))
    if args.update_summary:
        print(f"scores stored in {add_scores_to_summary(args.output_dir, scores)}")


if __name__ == "__main__":
    main()
