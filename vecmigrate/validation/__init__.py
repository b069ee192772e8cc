"""Checks that decide whether a new version may serve: figures, thresholds, verdicts.

Pure numpy/FAISS over the stores and index artifacts; no Temporal. Queries are sampled from the
source data (each query's own record removed from every result list, so recall measures how
well an index finds a record's neighbours, not the record itself) or read from a query log.
"""

from vecmigrate.validation.gates import judge
from vecmigrate.validation.retrieval import (
    exclude_self,
    overlap_at_k,
    rank_correlation,
    recall_at_k,
    timed_search,
)
from vecmigrate.validation.run import (
    GateQueries,
    check_shard,
    fold_truth,
    gate_queries,
    measure,
    report,
    same_data,
    validate_migration,
)

__all__ = [
    "GateQueries",
    "check_shard",
    "exclude_self",
    "fold_truth",
    "gate_queries",
    "judge",
    "measure",
    "overlap_at_k",
    "rank_correlation",
    "recall_at_k",
    "report",
    "same_data",
    "timed_search",
    "validate_migration",
]
