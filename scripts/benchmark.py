"""`python scripts/benchmark.py ARGS` runs `amg-bench ARGS` (amg_lightning/bench) in a checkout."""

from amg_lightning.bench.cli import main

if __name__ == "__main__":
    main()
