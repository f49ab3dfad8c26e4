"""Segment every image of a WebDataset with SAM's automatic mask generator.

    python predict.py "data.urls='shards/images-{000000..000009}.tar'" model=vit_h trainer=gpu

See conf/predict.yaml for every setting and README.md for multi-GPU, resuming and sweeps.
"""

from amg_lightning.run.cli import main

if __name__ == "__main__":
    main()
