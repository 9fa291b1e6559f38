"""Data input: Criteo text/CSV/Parquet readers, synthetic Criteo-shaped data, prefetch.

Every dataset yields batches ``{"dense": [B, 13] float, "sparse": KeyedJaggedTensor
(C1..C26), "label": [B] float}``, reads only this rank's part of the data, and has
``state_dict()``/``load_state_dict()`` for exact resume.
"""

from recis.io.batch import dense_transform, make_batch, rows_to_batch
from recis.io.criteo import (
    COLUMNS,
    CRITEO_KAGGLE_CARDINALITIES,
    DENSE_NAMES,
    NUM_DENSE,
    NUM_SPARSE,
    SPARSE_NAMES,
    RecordParser,
    default_table_sizes,
)
from recis.io.dataset import CriteoDataset
from recis.io.prefetch import Prefetcher, prefetch
from recis.io.split import Span, balance_spans, expand_paths, resolve_rank, split_files
from recis.io.synthetic import SyntheticCriteoDataset

__all__ = [
    "COLUMNS",
    "CRITEO_KAGGLE_CARDINALITIES",
    "DENSE_NAMES",
    "NUM_DENSE",
    "NUM_SPARSE",
    "SPARSE_NAMES",
    "CriteoDataset",
    "Prefetcher",
    "RecordParser",
    "Span",
    "SyntheticCriteoDataset",
    "balance_spans",
    "default_table_sizes",
    "dense_transform",
    "expand_paths",
    "make_batch",
    "prefetch",
    "resolve_rank",
    "rows_to_batch",
    "split_files",
]
