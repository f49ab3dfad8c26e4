"""Tabulate a Hydra multirun: swept settings, masks per image, speed and scores per job.

Writes sweep.md and sweep.csv into the multirun directory and prints the markdown. Scores
appear where a job's summary.json holds them under "eval": run the sweep with eval.gt=...,
or afterwards scripts/evaluate.py --update-summary on each job.
"""

from __future__ import annotations

import argparse

from amg_lightning.sweep import latest_multirun, write_report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "multirun_dir",
        nargs="?",
        help="multirun/<date>/<time>; the newest one under ./multirun when left out",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(write_report(args.multirun_dir or latest_multirun()))


if __name__ == "__main__":
    main()
