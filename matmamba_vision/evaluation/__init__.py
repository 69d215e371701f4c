"""Evaluation: mix'n'match sweeps, accuracy and Pareto fronts, plots, and adaptive retrieval.

- :mod:`.submodels` which submodel configurations to evaluate; ``MatMambaVision.forward_many`` runs many on one batch;
- :mod:`.classification` accuracy (:mod:`matmamba_vision.accuracy`) and cost of many submodels in one pass;
- :mod:`.embeddings` cached embedding passes; :mod:`.retrieval` exact chunked kNN (faiss or torch) and scores;
- adaptive retrieval: :mod:`.cascade` per-query escalation, :mod:`.rerank` shortlist and rerank,
  :mod:`.knn_index` a saved faiss index of the database, :mod:`.adaptive` retrieval.py's flags for them;
- :mod:`.report` result files, tables, Pareto fronts and plots; :mod:`.cli` what validate.py and retrieval.py
  share;
- :mod:`.latency` measured latency and memory per configuration (``validate.py --latency``), cached
  (:mod:`.latency_cache`) per machine and runtime; :func:`matmamba_vision.select_submodel` chooses under a budget.
"""

from ..accuracy import AccuracyMeter, topk_correct
from .classification import (
    config_costs,
    evaluate_configs,
    validate_configs,
    validation_tables,
    write_validation_outputs,
)
from .embeddings import EmbeddingCache, EmbeddingSet, embed_splits, file_sha256, state_dict_sha256
from .report import pareto_front, plot_retrieval, plot_tradeoff
from .retrieval import (
    KNN_BACKENDS,
    Baseline,
    faiss_available,
    knn_search,
    resolve_backend,
    retrieval_metrics,
    retrieval_table,
    run_retrieval,
    score_pair,
    write_retrieval_outputs,
)
from .submodels import (
    SubmodelConfig,
    dedupe_configs,
    dims_name,
    load_config_file,
    official_sweep,
    parse_granularities,
    parse_mixnmatch,
    random_configs,
    uniform_configs,
)

__all__ = [
    "AccuracyMeter",
    "topk_correct",
    "SubmodelConfig",
    "dedupe_configs",
    "dims_name",
    "load_config_file",
    "official_sweep",
    "parse_granularities",
    "parse_mixnmatch",
    "random_configs",
    "uniform_configs",
    "EmbeddingCache",
    "EmbeddingSet",
    "embed_splits",
    "file_sha256",
    "state_dict_sha256",
    "KNN_BACKENDS",
    "faiss_available",
    "knn_search",
    "resolve_backend",
    "pareto_front",
    "plot_retrieval",
    "plot_tradeoff",
    "Baseline",
    "retrieval_table",
    "run_retrieval",
    "score_pair",
    "write_retrieval_outputs",
    "retrieval_metrics",
    "config_costs",
    "evaluate_configs",
    "validate_configs",
    "validation_tables",
    "write_validation_outputs",
]
