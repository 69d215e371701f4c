#!/usr/bin/env python3
"""Matryoshka training of MatMamba-Vision models (timm-style flags; see ``--help``).

    python train.py                                   # Fashion-MNIST on the CPU, the embedded default
    python train.py -c configs/imagenet_35m.yaml --data-dir /data/imagenet      # the official recipe
    torchrun --nproc_per_node 8 train.py -c configs/imagenet_35m.yaml --dataset ffcv --data-dir /data/ffcv \
        --aa '' --color-jitter 0                      # ffcv: no PIL transforms (RandAugment, colour jitter)
"""

import sys

from matmamba_vision.data import error_line
from matmamba_vision.training import TrainingError, main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, TrainingError) as e:
        sys.exit(f"train.py: error: {error_line(e)}")
