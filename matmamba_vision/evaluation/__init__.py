"""Evaluation: mix'n'match sweeps, accuracy and Pareto fronts, plots, and adaptive retrieval.

- :mod:`.configs` which submodels to evaluate (``MatMambaVision.forward_many`` runs many on one batch);
- :mod:`.sweep` / :mod:`.accuracy` / :mod:`.validation` classification accuracy, cost and result files;
- :mod:`.embeddings` cached embedding passes; :mod:`.knn` exact chunked search (faiss or torch);
- :mod:`.retrieval_metrics` / :mod:`.retrieval` retrieval scores; :mod:`.pareto`, :mod:`.plots`, :mod:`.report`.
"""
from .accuracy import AccuracyMeter, topk_correct
from .configs import (
    SubmodelConfig, dedupe_configs, dims_name, load_config_file, official_sweep, parse_granularities, parse_mixnmatch,
    random_configs, uniform_configs,
)
from .embeddings import EmbeddingCache, EmbeddingSet, embed_splits, file_sha256, state_dict_sha256
from .knn import KNN_BACKENDS, faiss_available, knn_search, resolve_backend
from .pareto import pareto_front
from .plots import plot_retrieval, plot_tradeoff
from .retrieval import Baseline, retrieval_table, run_retrieval, score_pair, write_retrieval_outputs
from .retrieval_metrics import retrieval_metrics
from .sweep import config_costs, evaluate_configs
from .validation import validate_configs, validation_tables, write_validation_outputs

__all__ = [
    "AccuracyMeter", "topk_correct", "SubmodelConfig", "dedupe_configs", "dims_name", "load_config_file",
    "official_sweep", "parse_granularities", "parse_mixnmatch", "random_configs", "uniform_configs", "EmbeddingCache",
    "EmbeddingSet", "embed_splits", "file_sha256", "state_dict_sha256", "KNN_BACKENDS", "faiss_available",
    "knn_search", "resolve_backend", "pareto_front", "plot_retrieval", "plot_tradeoff",
    "Baseline", "retrieval_table", "run_retrieval", "score_pair", "write_retrieval_outputs", "retrieval_metrics",
    "config_costs", "evaluate_configs", "validate_configs", "validation_tables", "write_validation_outputs",
]
