#!/usr/bin/env python3
"""Matryoshka training of MatMamba-Vision models (timm-style flags; see ``--help``).

    python train.py                                   # Fashion-MNIST on the CPU, the embedded default
    python train.py -c configs/imagenet_35m.yaml --data-dir /data/imagenet      # the official recipe
    torchrun --nproc_per_node 8 train.py -c configs/imagenet_35m.yaml --dataset ffcv --data-dir /data/ffcv \
        --aa '' --color-jitter 0                      # ffcv: no PIL transforms (RandAugment, colour jitter)
"""

from matmamba_vision.flags import run_script
from matmamba_vision.training import TrainingError, main

if __name__ == "__main__":
    run_script(main, failures=(TrainingError,))  # exit 2: bad flags or data; 1: training failed
