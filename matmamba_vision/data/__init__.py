"""The one data module of train.py, validate.py and retrieval.py: Fashion-MNIST, ImageNet-style folders
(timm's dataset), FFCV ``.beton`` files, and timm transforms, behind :func:`create_eval_loader` and
:func:`create_train_loader`."""

from .fmnist import FMNIST_CLASSES, FashionMNIST, load_fmnist
from .folder import create_folder_dataset
from .holdout import HOLDOUT_SEED, HOLDOUT_SPLITS, SPLITS, holdout_indices, holdout_record, holdout_size
from .loader import (
    DATASETS,
    EvalLoader,
    TensorTrainLoader,
    TrainLoader,
    create_eval_loader,
    create_train_loader,
    dataset_classes,
    fmnist_data_config,
    resolve_dataset,
    train_holdout_record,
)
from .transforms import (
    TensorAugment,
    create_eval_transform,
    create_mixup,
    create_train_transform,
    image_mode,
    model_data_config,
    split_batch,
    to_channels,
)

__all__ = [
    "FMNIST_CLASSES",
    "FashionMNIST",
    "load_fmnist",
    "create_folder_dataset",
    "HOLDOUT_SEED",
    "HOLDOUT_SPLITS",
    "SPLITS",
    "holdout_indices",
    "holdout_record",
    "holdout_size",
    "DATASETS",
    "dataset_classes",
    "EvalLoader",
    "TrainLoader",
    "TensorTrainLoader",
    "create_eval_loader",
    "create_train_loader",
    "fmnist_data_config",
    "train_holdout_record",
    "resolve_dataset",
    "TensorAugment",
    "create_eval_transform",
    "create_train_transform",
    "create_mixup",
    "image_mode",
    "model_data_config",
    "split_batch",
    "to_channels",
]
