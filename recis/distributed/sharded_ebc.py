"""ShardedEmbeddingBagCollection: an EmbeddingBagCollection whose tables are sharded
over a process group by a ShardingPlan, with the same output."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recis.distributed.comm import GradArrival, rank_and_world
from recis.distributed.plan import ShardingPlan
from recis.distributed.sharding.data_parallel import ReplicaGradSync, replica_lookup
from recis.distributed.sharding.input_dist import InputDist, Prepared
from recis.distributed.sharding.layout import Layout
from recis.distributed.sharding.lookup import ShardLookup
from recis.distributed.sharding.output_dist import OutputDist
from recis.distributed.types import DATA_PARALLEL
from recis.framework.progress import Progress
from recis.nn.embedding_bag import EmbeddingBagCollection
from recis.nn.table import EmbeddingTable
from recis.nn.table_init import init_table_part
from recis.ops.table_memory import empty_table
from recis.sparse import KeyedJaggedTensor, KeyedTensor


def _local_shard_weight(
    source: EmbeddingTable,
    rows: slice,
    cols: slice,
    device: torch.device,
    seed: int,
    progress: Progress,
) -> Tensor:
    """This rank's slice of a table: copied from its values, or, when the table was
    built on ``meta`` (never materialised whole), the slice of the values it would
    have had built whole under ``seed`` (``init_table_part``)."""
    w = source.weight
    shard = empty_table((rows.stop - rows.start, cols.stop - cols.start), w.dtype, device)
    if w.device.type == "meta":
        init_table_part(source.config, shard, rows.start, cols.start, seed, progress.add)
    else:
        shard.copy_(w[rows, cols])
    return shard


class ShardedEmbeddingBagCollection(nn.Module):
    """The sharded form of an :class:`EmbeddingBagCollection`; ``DistributedModelParallel``
    builds it. ``tables`` holds this rank's shards (``EmbeddingTable`` with row / column
    offsets) and data-parallel replicas, by table name.

    ``forward(kjt)`` returns the same :class:`KeyedTensor` as the unsharded collection.
    Embedding gradients are multiplied by ``grad_scale`` (``1 / world_size`` matches
    DDP's mean of dense gradients). ``comm_bytes()`` reports what each stage sent to
    other ranks in the last step.

    Example::

        >>> sebc = ShardedEmbeddingBagCollection(ebc, plan_sharding(ebc, world_size=2))
        >>> kt = sebc(kjt)   # on every rank, each with its own batch
    """

    def __init__(
        self,
        ebc: EmbeddingBagCollection,
        plan: ShardingPlan,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        grad_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.group = process_group
        self.rank, self.world_size = rank_and_world(process_group)
        self.device = torch.device(device or "cpu")
        self._configs = ebc.embedding_bag_configs()
        self.layout = Layout(self._configs, plan, self.world_size)
        self.grad_scale = 1.0 / self.world_size if grad_scale is None else grad_scale
        self.tables = nn.ModuleDict()
        seed = torch.initial_seed()  # the same on every rank seeded alike
        progress = self._init_progress(ebc, plan)
        for cfg in self._configs:
            tp = plan.tables[cfg.name]
            shard = tp.shard_on(self.rank)
            if shard is None:
                continue
            rows = slice(shard.row_offset, shard.row_offset + shard.rows)
            cols = slice(shard.col_offset, shard.col_offset + shard.cols)
            source = ebc.tables[cfg.name]
            weight = _local_shard_weight(source, rows, cols, self.device, seed, progress)
            if tp.sharding_type == DATA_PARALLEL:
                self.tables[cfg.name] = EmbeddingTable(cfg, weight)
            else:
                self.tables[cfg.name] = EmbeddingTable(
                    cfg, weight, shard.row_offset, shard.col_offset
                )
        self._broadcast_replicas()
        self.input_dist = InputDist(
            self.layout, self.rank, self.world_size, self.group, self.device
        )
        self.lookup = ShardLookup(self.layout, self.rank, self.tables, self.device)
        self.output_dist = OutputDist(
            self.layout, self.rank, self.world_size, self.group, self.grad_scale
        )
        self._stats: dict[str, int] = {}

    def _init_progress(self, ebc: EmbeddingBagCollection, plan: ShardingPlan) -> Progress:
        """Counts the bytes of this rank's shards of tables built on ``meta`` as they are
        initialised (minutes for big tables); rank 0 logs every 10 s."""
        total = 0
        for cfg in self._configs:
            shard, weight = plan.tables[cfg.name].shard_on(self.rank), ebc.tables[cfg.name].weight
            if shard is not None and weight.device.type == "meta":
                total += shard.rows * shard.cols * weight.element_size()
        what = f"initialising embedding tables: rank {self.rank}"
        return Progress(what, "initialised", total, log=self.rank == 0)

    def _broadcast_replicas(self) -> None:
        # Replicas that started apart would train apart. Built on meta they are equal
        # when every rank has the same seed (torch.initial_seed()); built with values,
        # when every rank drew them alike. Rank 0's values make sure of it.
        if self.world_size == 1:
            return
        for cfg in self.layout.replicated:
            dist.broadcast(self.tables[cfg.name].weight.data, group=self.group, group_src=0)

    def embedding_bag_configs(self) -> list:
        return list(self._configs)

    def feature_names(self) -> list[str]:
        return list(self.layout.features)

    def comm_bytes(self) -> dict[str, int]:
        """Bytes this rank sent to other ranks in the last step, per stage:
        ``input_dist`` (sizes header, lengths, ids, weights), ``output_dist`` (pooled
        rows), ``output_dist_backward`` (their gradients), ``data_parallel_backward``
        (replica gradient gather)."""
        return dict(self._stats)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        self._stats = {}
        prep = self.input_dist.prepare(features)
        header = self.input_dist.exchange(prep)
        pending = None
        if self.layout.sharded:
            pending = self.input_dist.start(prep, header, self._stats)
        # Replicated tables need no communication forward: look them up while the
        # ids are in flight.
        replicated = self._replicated_blocks(prep, header)
        sharded = None
        if pending is not None:
            # The gradients' all-to-all lands behind the rest of backward; the sparse
            # optimizer reading them waits for it.
            arrival = GradArrival()
            send, sizes = self.lookup(pending.wait(), arrival)
            sharded = self.output_dist.start(send, sizes, prep.batch, self._stats, arrival)
            sharded = sharded.wait()
        return KeyedTensor(
            self.layout.features, self.layout.dims, self._join(sharded, replicated, prep.batch)
        )

    def _replicated_blocks(self, prep: Prepared, header: list[list[int]]) -> list[Tensor]:
        """Each data-parallel table's features side by side, ``[B, features * dim]``."""
        weighted = any(row[1] for row in header)
        batches = [row[0] for row in header]
        blocks = []
        for i, cfg in enumerate(self.layout.replicated):
            ids, lengths, w = prep.replicated[i]
            if weighted and w is None:
                w = torch.ones(ids.numel(), device=ids.device)
            nf = len(cfg.feature_names)
            sync = ReplicaGradSync(
                self.group,
                self.world_size,
                [nf * b for b in batches],
                [row[self.input_dist.replicated_column + i] for row in header],
                weighted,
                self.grad_scale,
                self._stats,
            )
            pooled = replica_lookup(
                self.tables[cfg.name], ids, lengths, w, cfg.pooling == "mean", sync
            ).view(nf, prep.batch, cfg.embedding_dim)
            blocks.append(pooled.permute(1, 0, 2).reshape(prep.batch, nf * cfg.embedding_dim))
        return blocks

    def _join(self, sharded: Tensor | None, replicated: list[Tensor], batch: int) -> Tensor:
        """The output ``[B, sum of dims]`` in feature order, from the sharded output and
        the data-parallel blocks."""
        runs = self.layout.output_runs
        if not runs:
            return torch.zeros(batch, 0, device=self.device)
        if len(runs) == 1 and isinstance(runs[0], slice):
            assert sharded is not None
            return sharded  # every table sharded: no copy
        blocks = [
            replicated[r] if isinstance(r, int) else sharded[:, r]  # type: ignore[index]
            for r in runs
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
