"""Input dist: validate a batch, route each table's ids to its shards (bucketized by
row block for row-split tables), exchange sizes and error flags, then send lengths +
ids and weights with asynchronous all-to-alls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from recis.distributed.comm import AllToAll, exchange_header
from recis.distributed.sharding.layout import Layout, Routed
from recis.distributed.sharding.routing import ROUTERS
from recis.nn.embedding_bag import check_ids_in_range, table_inputs
from recis.sparse import KeyedJaggedTensor

# header layout: [batch, has_weights, ints sent to rank 0..W-1, ids of each replicated table]
_FIXED = 2


@dataclass
class Prepared:
    batch: int
    error: str | None
    has_weights: bool
    routed: list[list[Routed]] = field(default_factory=list)  # [sharded table][shard]
    replicated: list[tuple[Tensor, Tensor, Tensor | None]] = field(default_factory=list)


@dataclass
class Received:
    """What this rank's shards got: per local slot, ids / lengths / weights of every
    source rank concatenated (source-major), and the batch size of each source."""

    batches: list[int]
    lengths: list[Tensor]
    ids: list[Tensor]
    weights: list[Tensor | None]


class InputDist:
    def __init__(
        self, layout: Layout, rank: int, world_size: int, group: dist.ProcessGroup | None
    ) -> None:
        self.layout, self.rank, self.world_size, self.group = layout, rank, world_size, group

    def prepare(self, kjt: KeyedJaggedTensor) -> Prepared:
        """Validates and routes locally; bad input is recorded, not raised, so that the
        header exchange can tell every rank (no rank is left waiting)."""
        prep = Prepared(kjt.stride(), None, kjt.weights_or_none() is not None)
        try:
            for table in self.layout.sharded:
                cfg = table.config
                ids, lengths, w, per_feature = table_inputs(kjt, cfg.feature_names, cfg.name)
                check_ids_in_range(
                    ids, per_feature, cfg.feature_names, cfg.name, cfg.num_embeddings
                )
                ids, lengths = ids.long(), lengths.long()
                if w is not None:
                    w = w.float()
                if table.splits_rows and table.mean:
                    # Each shard sees part of a bag: divide by the FULL length here and
                    # let the shards pool with sum.
                    full = lengths.clamp(min=1).to(torch.float32).repeat_interleave(lengths)
                    w = (w if w is not None else torch.ones_like(full)) / full
                prep.routed.append(ROUTERS[table.plan.sharding_type](table, ids, lengths, w))
            for cfg in self.layout.replicated:
                ids, lengths, w, per_feature = table_inputs(kjt, cfg.feature_names, cfg.name)
                check_ids_in_range(
                    ids, per_feature, cfg.feature_names, cfg.name, cfg.num_embeddings
                )
                prep.replicated.append(
                    (ids.long(), lengths.long(), None if w is None else w.float())
                )
        except ValueError as e:
            prep.error = str(e)
            prep.routed, prep.replicated = [], []
        return prep

    def _parts(self, prep: Prepared, dest: int) -> list[Routed]:
        return [prep.routed[s.table][s.index] for s in self.layout.slots_on[dest]]

    def header(self, prep: Prepared, device: torch.device) -> Tensor:
        values = [prep.batch, int(prep.has_weights)]
        for d in range(self.world_size):
            parts = [] if prep.error else self._parts(prep, d)
            values.append(sum(p.lengths.numel() + p.ids.numel() for p in parts))
        for i in range(len(self.layout.replicated)):
            values.append(0 if prep.error else prep.replicated[i][0].numel())
        return torch.tensor(values, dtype=torch.int64, device=device)

    def exchange(self, prep: Prepared, device: torch.device) -> Tensor:
        """Every rank's header ``[W, n]``; raises on every rank if any had bad input."""
        return exchange_header(self.header(prep, device), prep.error, self.group, self.world_size)

    def start(self, prep: Prepared, header: Tensor, stats: dict[str, int]) -> InputAwaitable:
        """Issues the all-to-alls of lengths + ids and of weights (when any rank needs them)."""
        weighted = self.layout.needs_weights or bool(header[:, 1].any())
        ints, floats, int_splits, float_splits = [], [], [], []
        for d in range(self.world_size):
            parts = self._parts(prep, d)
            chunk = [p.lengths for p in parts] + [p.ids for p in parts]
            ints.extend(chunk)
            int_splits.append(sum(c.numel() for c in chunk))
            if weighted:
                ws = [
                    p.weights
                    if p.weights is not None
                    else torch.ones(p.ids.numel(), device=p.ids.device)
                    for p in parts
                ]
                floats.extend(ws)
                float_splits.append(sum(w.numel() for w in ws))
        batches = header[:, 0].tolist()
        from_src = header[:, _FIXED + self.rank].tolist()
        my_slots = self.layout.slots_on[self.rank]
        bag_counts = [self.layout.bags(my_slots, b) for b in batches]
        dev = header.device
        send_ints = torch.cat(ints) if ints else torch.empty(0, dtype=torch.int64, device=dev)
        ops_ = [AllToAll(send_ints, int_splits, from_src, self.group, self.world_size)]
        stats["input_dist"] = (self.world_size - 1) * header.shape[1] * 8 + 8 * sum(
            n for d, n in enumerate(int_splits) if d != self.rank
        )
        if weighted:
            send_w = torch.cat(floats) if floats else torch.empty(0, device=dev)
            w_from = [n - b for n, b in zip(from_src, bag_counts, strict=True)]
            ops_.append(AllToAll(send_w, float_splits, w_from, self.group, self.world_size))
            stats["input_dist"] += 4 * sum(n for d, n in enumerate(float_splits) if d != self.rank)
        return InputAwaitable(self.layout, self.rank, batches, from_src, bag_counts, ops_)


class InputAwaitable:
    def __init__(
        self,
        layout: Layout,
        rank: int,
        batches: list[int],
        from_src: list[int],
        bag_counts: list[int],
        ops_: list[AllToAll],
    ) -> None:
        self.layout, self.rank, self.batches = layout, rank, batches
        self.from_src, self.bag_counts, self.ops = from_src, bag_counts, ops_

    def wait(self) -> Received:
        slots = self.layout.slots_on[self.rank]
        ints = self.ops[0].wait().split(self.from_src)
        weights = None
        if len(self.ops) > 1:
            weights = (
                self.ops[1]
                .wait()
                .split([n - b for n, b in zip(self.from_src, self.bag_counts, strict=True)])
            )
        if not slots:
            return Received(self.batches, [], [], [])
        per_slot_lengths: list[list[Tensor]] = [[] for _ in slots]
        per_src_lengths = []
        for s, buf in enumerate(ints):
            sizes = [self.layout.sharded[x.table].num_features * self.batches[s] for x in slots]
            lens = buf[: self.bag_counts[s]].split(sizes)
            per_src_lengths.append(lens)
            for i, ln in enumerate(lens):
                per_slot_lengths[i].append(ln)
        # Id counts of every (source, slot) in one host sync.
        flat = [ln for lens in per_src_lengths for ln in lens]
        counts = torch.stack([ln.sum() for ln in flat]).tolist() if flat else []
        per_slot_ids: list[list[Tensor]] = [[] for _ in slots]
        per_slot_w: list[list[Tensor]] = [[] for _ in slots]
        for s, buf in enumerate(ints):
            c = counts[s * len(slots) : (s + 1) * len(slots)]
            for i, part in enumerate(buf[self.bag_counts[s] :].split(c)):
                per_slot_ids[i].append(part)
            if weights is not None:
                for i, part in enumerate(weights[s].split(c)):
                    per_slot_w[i].append(part)
        return Received(
            self.batches,
            [torch.cat(x) for x in per_slot_lengths],
            [torch.cat(x) for x in per_slot_ids],
            [torch.cat(x) if weights is not None else None for x in per_slot_w],
        )
