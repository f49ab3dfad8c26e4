"""The benchmark where the project guide names it: the same command as `amg-bench`.

    python scripts/benchmark.py generate --images photos/dog.jpg --checkpoint mobile_sam.pt \\
        --fast --stages
    python scripts/benchmark.py --help
"""

from amg_lightning.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
