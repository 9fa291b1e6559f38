"""Synthetic Criteo-shaped data with a learnable signal, deterministic and resumable."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recis.io.batch import Batch, dense_transform, make_batch
from recis.io.criteo import NUM_DENSE, NUM_SPARSE, SPARSE_NAMES, resolve_table_sizes
from recis.io.prefetch import prefetch
from recis.io.split import resolve_rank
from recis.sparse import KeyedJaggedTensor

# Ids below this Zipf rank carry their own hidden effect; rarer ids share effects by
# rank modulo this, so the hidden model never needs a table-sized array.
_HIDDEN_IDS = 4096  # a power of two


def _seed(*parts: int) -> int:
    # Every part as two 32-bit words: masking to 32 bits would make batch 2**32 + i
    # (e.g. a held-out split far from the training range) repeat batch i.
    words = [w for p in parts for w in (int(p) & 0xFFFFFFFF, (int(p) >> 32) & 0xFFFFFFFF)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def zipf_ranks(size: int, alpha: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` draws of a (continuous-approximation) Zipf law over ranks ``[0, size)``.

    Inverse CDF of the density ``∝ x^-alpha`` on ``[1, size + 1)``, floored; ``alpha``
    near 1 gives the long tail of real categorical features.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return _zipf_ranks_of(u, _zipf_scale(size, alpha), size, alpha)


def _zipf_scale(size: int, alpha: float) -> float:
    """The constant of the inverse CDF over ``[1, size + 1)``."""
    if abs(alpha - 1.0) < 1e-9:
        return math.log(size + 1)
    return math.pow(size + 1, 1.0 - alpha) - 1.0


def _zipf_ranks_of(u: Tensor, scale: float | Tensor, size: int | Tensor, alpha: float) -> Tensor:
    """The Zipf ranks of uniform draws ``u``; ``scale`` (:func:`_zipf_scale`) and
    ``size`` are one value, or one per draw."""
    if abs(alpha - 1.0) < 1e-9:
        x = torch.exp(u * scale)
    else:
        x = (u * scale + 1.0).pow(1.0 / (1.0 - alpha))
    ranks = (x.floor().to(torch.int64) - 1).clamp_(min=0)
    return ranks.clamp_(max=size - 1) if isinstance(size, int) else torch.minimum(ranks, size - 1)


def _scatter_multiplier(size: int) -> int:
    """A multiplier coprime with ``size``: ``rank * m % size`` permutes the ids."""
    m = 2654435761 % size or 1
    while math.gcd(m, size) != 1:
        m += 1
    return m


class SyntheticCriteoDataset:
    """Random Criteo-shaped batches whose labels follow a hidden logistic model.

    13 dense features (log-transformed heavy-tailed counts) and 26 categorical
    features ``C1..C26``; ids are Zipf-distributed per table (hot ids scattered over
    the table by a fixed permutation, as hashing does), one per bag unless
    ``max_ids_per_feature`` > 1 (then bag lengths are uniform in ``[1, max]`` and the
    bag's hidden effect is the mean of its ids'). The label is drawn from
    ``sigmoid(w·dense + Σ_features effect(id) + b)`` whose weights depend on ``seed``
    only, so a model trained on it gains AUC (the hidden score itself reaches about
    0.8). Batch ``i`` of ``rank`` is a pure function of ``(seed, rank, i)``: the data is
    deterministic, every rank sees different samples, and ``state_dict`` (the next
    batch index) resumes exactly. ``num_batches=None`` is an endless stream.

    Example::

        >>> ds = SyntheticCriteoDataset(batch_size=512, table_sizes=10_000, num_batches=100)
        >>> batch = next(iter(ds))
        >>> batch["dense"].shape, batch["sparse"].keys()[:2], batch["label"].shape
        (torch.Size([512, 13]), ['C1', 'C2'], torch.Size([512]))
    """

    def __init__(
        self,
        batch_size: int,
        table_sizes: int | Sequence[int] | None = None,
        num_batches: int | None = None,
        *,
        seed: int = 0,
        zipf_alpha: float = 1.1,
        max_ids_per_feature: int = 1,
        signal_scale: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 2,
        first_batch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_batches is not None and num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None, got {num_batches}")
        if max_ids_per_feature < 1:
            raise ValueError(f"max_ids_per_feature must be >= 1, got {max_ids_per_feature}")
        self.batch_size = batch_size
        self.table_sizes = resolve_table_sizes(table_sizes)
        self.num_batches = num_batches
        self.seed = seed
        self.zipf_alpha = zipf_alpha
        self.max_ids_per_feature = max_ids_per_feature
        self.prefetch = prefetch
        if first_batch < 0:
            raise ValueError(f"first_batch must be >= 0, got {first_batch}")
        # Batches are numbered from here: a held-out split of the same distribution
        # is another range of indices (e.g. eval from 2**40) under the same seed.
        self.first_batch = first_batch
        self.rank, self.world_size = resolve_rank(rank, world_size)
        # Per table, repeated for each of its drawn ids: every table's ids are drawn in
        # one call. _zipf_scale is computed in Python, as zipf_ranks does.
        self._sizes = torch.tensor(self.table_sizes, dtype=torch.int64)
        self._scales = torch.tensor(
            [_zipf_scale(s, zipf_alpha) for s in self.table_sizes], dtype=torch.float64
        )
        self._multipliers = torch.tensor(
            [_scatter_multiplier(s) for s in self.table_sizes], dtype=torch.int64
        )
        # The hidden model: the same on every rank (depends on the seed only).
        g = torch.Generator().manual_seed(_seed(seed, 0x5EED))
        self._dense_mu = torch.rand(NUM_DENSE, generator=g, dtype=torch.float64) * 4
        self._dense_w = torch.randn(NUM_DENSE, generator=g, dtype=torch.float64) * 0.3
        self._effects = torch.randn(NUM_SPARSE, _HIDDEN_IDS, generator=g, dtype=torch.float64)
        self._feature_w = torch.rand(NUM_SPARSE, generator=g, dtype=torch.float64) * 0.4
        self._first_effects = torch.arange(NUM_SPARSE) * _HIDDEN_IDS  # each table's in _effects
        self._per_id_cache: tuple[Tensor, ...] | None = None
        self.signal_scale = signal_scale
        self._bias = -1.0  # about 25-30% positives, close to Criteo's CTR
        self._state = {"epoch": 0, "batch": 0}
        self._active: Iterator[Batch] | None = None

    def make_batch(self, index: int) -> tuple[Batch, Tensor]:
        """Batch ``index`` of this rank and the hidden logits its labels were drawn from."""
        g = torch.Generator().manual_seed(_seed(self.seed, self.rank, index))
        b = self.batch_size
        raw = torch.exp(
            self._dense_mu + 1.5 * torch.randn(b, NUM_DENSE, generator=g, dtype=torch.float64)
        ).floor()
        # Some counts are missing (0) as in the real data.
        raw[torch.rand(b, NUM_DENSE, generator=g) < 0.2] = 0
        dense = dense_transform(raw)
        standardized = (dense.double() - self._dense_mu * 0.8) / 1.5
        logit = standardized @ self._dense_w + self._bias
        # Every table's bag lengths, then every id, each in one draw (with one id per bag
        # the same numbers as drawing table by table): one op per step of the recipe
        # instead of one per table per step took 0.45-0.65x the time (1,024 samples).
        tables = len(self.table_sizes)
        if self.max_ids_per_feature == 1:
            lengths = torch.ones(tables * b, dtype=torch.int64)
        else:
            lengths = torch.randint(1, self.max_ids_per_feature + 1, (tables * b,), generator=g)
        ids_per_table = lengths.view(tables, b).sum(1)
        u = torch.rand(int(ids_per_table.sum()), generator=g, dtype=torch.float64)
        sizes, scales, multipliers, first_effects = self._per_id(ids_per_table)
        ranks = _zipf_ranks_of(u, scales, sizes, self.zipf_alpha)
        # The effect of (table, rank % _HIDDEN_IDS), a power of two.
        effects = self._effects.view(-1).index_select(
            0, first_effects + (ranks & (_HIDDEN_IDS - 1))
        )
        if self.max_ids_per_feature > 1:  # mean effect of each bag's ids
            bag = torch.repeat_interleave(torch.arange(tables * b), lengths)
            zeros = torch.zeros(tables * b, dtype=torch.float64)
            effects = zeros.index_add_(0, bag, effects) / lengths
        # Added table by table: the order the labels have always been drawn in.
        for table_logit in self._feature_w[:, None] * effects.view(tables, b):
            logit += table_logit
        logit = logit * self.signal_scale
        labels = (torch.rand(b, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).float()
        values = ranks * multipliers % sizes
        kjt = KeyedJaggedTensor(SPARSE_NAMES, values, lengths, stride=b)
        return make_batch(labels, dense, kjt), logit

    def _per_id(self, ids_per_table: Tensor) -> tuple[Tensor, ...]:
        """Each table's size, Zipf scale, scatter multiplier and first row of hidden
        effects, repeated for each of its ids (the last ones made are kept: with one id
        per bag every batch has the same)."""
        cache = self._per_id_cache  # read once: the prefetch thread may replace it
        if cache is None or not torch.equal(cache[0], ids_per_table):
            per_table = (self._sizes, self._scales, self._multipliers, self._first_effects)
            cache = (ids_per_table, *(t.repeat_interleave(ids_per_table) for t in per_table))
            self._per_id_cache = cache
        return cache[1:]

    # -- position ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batch"}``: the index of the next batch to hand out."""
        return {"rank": self.rank, "seed": self.seed, **self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["rank"]) != self.rank or int(state["seed"]) != self.seed:
            raise ValueError(
                f"SyntheticCriteoDataset state is of rank {state['rank']} seed {state['seed']}, "
                f"this dataset is rank {self.rank} seed {self.seed}"
            )
        self.close()
        self._state = {"epoch": int(state["epoch"]), "batch": int(state["batch"])}

    def load_resharded_state_dict(
        self, states: Sequence[dict[str, Any]], rank: int, world_size: int
    ) -> None:
        """Resumes after a change of world size (a checkpoint loaded on another number
        of ranks calls this with every saved rank's state): rank r goes on with saved
        rank r's stream; a rank the saved job did not have starts its own stream, which
        no rank has read, at batch 0 of the saved epoch."""
        if (rank, world_size) != (self.rank, self.world_size):
            raise ValueError(
                f"SyntheticCriteoDataset is rank {self.rank} of {self.world_size}, "
                f"asked to load as rank {rank} of {world_size}"
            )
        if not states:
            raise ValueError("SyntheticCriteoDataset: no saved state to reshard")
        mine = [s for s in states if int(s["rank"]) == self.rank]
        if mine:
            self.load_state_dict(mine[0])
            return
        seeds = {int(s["seed"]) for s in states}
        if seeds != {self.seed}:
            raise ValueError(
                f"SyntheticCriteoDataset states are of seed(s) {sorted(seeds)}, "
                f"this dataset is seed {self.seed}"
            )
        self.close()
        self._state = {"epoch": max(int(s["epoch"]) for s in states), "batch": 0}

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless SyntheticCriteoDataset (num_batches=None) has no len()")
        return self.num_batches

    # -- iteration -----------------------------------------------------------------
    def _produce(self, start: int) -> Iterator[tuple[Batch, int]]:
        index = start
        while self.num_batches is None or index < self.num_batches:
            yield self.make_batch(self.first_batch + index)[0], index + 1
            index += 1

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self) -> Iterator[Batch]:
        for batch, next_index in prefetch(self._produce(self._state["batch"]), self.prefetch):
            self._state["batch"] = next_index
            yield batch
        # A finite stream repeats the same batches next epoch, like a file would.
        self._state = {"epoch": self._state["epoch"] + 1, "batch": 0}

    def close(self) -> None:
        """Stops a running iteration (and its prefetch thread); the position is kept."""
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None
