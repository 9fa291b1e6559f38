"""SparseOptimizer: the base of the fused sparse optimizers over embedding tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from recis.nn.table import EmbeddingTable, SparseGrad
from recis.ops.table_memory import empty_table

# Kinds of per-table state tensors: shaped like the table's local weight, one value
# per row, or a 0-d scalar (identical on every shard of a table).
ELEMENT, ROW, SCALAR = "element", "row", "scalar"


def check_non_negative(cls_name: str, **values: float) -> None:
    """Raises ``ValueError`` naming the first hyper-parameter that is negative, NaN or
    infinite."""
    for name, value in values.items():
        if not 0.0 <= value < math.inf:  # also rejects NaN
            raise ValueError(f"{cls_name}: {name} must be a finite number >= 0, got {value}")


def plain_hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a torch optimizer's param group that are numbers, flags, strings,
    None or sequences of numbers (as tuples): its hyper-parameters, JSON as they are,
    without ``params`` and recis's ``table_names``. A one-element tensor (torch's
    optimizers take ``lr=torch.tensor(0.01)``) becomes its number."""
    plain: dict[str, Any] = {}
    for key, value in group.items():
        if key in ("params", "table_names"):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            plain[key] = value.item()
        elif isinstance(value, (tuple, list)):
            if all(isinstance(v, (int, float)) for v in value):
                plain[key] = tuple(value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            plain[key] = value
    return plain


def grad_lists(grads: list[SparseGrad]) -> tuple[list, list, list, list, list]:
    """The fields of ``grads`` as the op's per-table lists: ``ids, offsets,
    per_sample_weights, grad_outs, mean``."""
    return (
        [g.ids for g in grads],
        [g.offsets for g in grads],
        [g.per_sample_weights for g in grads],
        [g.grad_out for g in grads],
        [g.mean for g in grads],
    )


class SparseOptimizer(torch.optim.Optimizer):
    """Base of the sparse optimizers: lazily updates the rows each table's gradient touches.

    ``tables`` maps names to :class:`~recis.nn.EmbeddingTable` (what
    :func:`~recis.nn.filter_out_sparse_param` returns). The tables' weights and the
    hyper-parameters form one param group, so ``torch.optim.lr_scheduler`` works;
    the group's ``"table_names"`` lists the tables in order. ``step()`` applies each
    table's :meth:`~recis.nn.EmbeddingTable.sparse_grad` with a fused kernel
    (tables without gradient are skipped); ``zero_grad()`` clears the records.

    State is kept per table, created on first use: :meth:`table_state` /
    :meth:`set_table_state` read and replace it (checkpointing, resharding), and
    ``state_dict()`` / ``load_state_dict()`` round-trip it with the hyper-parameters.

    Subclasses define :meth:`_state_spec` and :meth:`_update`.
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable], defaults: dict[str, Any]) -> None:
        if not isinstance(tables, Mapping):
            raise TypeError(
                f"{type(self).__name__}: tables must be a dict name -> EmbeddingTable "
                f"(see recis.nn.filter_out_sparse_param), got {type(tables).__name__}"
            )
        for name, table in tables.items():
            if not isinstance(table, EmbeddingTable):
                raise TypeError(
                    f"{type(self).__name__}: table {name!r} is a {type(table).__name__}, "
                    "not an EmbeddingTable"
                )
        self._tables: dict[str, EmbeddingTable] = dict(tables)
        self._table_states: dict[str, dict[str, Tensor]] = {}
        group = {"params": [t.weight for t in self._tables.values()], "table_names": list(tables)}
        super().__init__([group], defaults)

    # --- what subclasses provide ---

    def _state_spec(self, group: dict[str, Any]) -> dict[str, tuple[str, float]]:
        """State name -> (kind, initial value) for one table."""
        raise NotImplementedError

    def _update(
        self,
        weights: list[Tensor],
        grads: list[SparseGrad],
        states: list[dict[str, Tensor]],
        group: dict[str, Any],
    ) -> None:
        """Applies ``grads[t]`` to ``weights[t]`` and ``states[t]`` in place, for every
        table ``t`` at once (one fused op call: the CPU kernels dedup several tables in
        parallel)."""
        raise NotImplementedError

    # --- torch.optim.Optimizer interface ---

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        names = param_group.get("table_names")
        params = param_group.get("params")
        if names is None or params is None or len(names) != len(list(params)):
            raise ValueError(
                f"{type(self).__name__}: a param group needs 'table_names' matching its "
                "'params' (build the optimizer from a dict of EmbeddingTables instead)"
            )
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradient recorded in every table."""
        for table in self._tables.values():
            table.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Updates every table that has a gradient, the group's last table first;
        returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Lookups read the tables in this order, so the last tables read are the
            # likeliest to have their rows still in cache: update them first. One op call
            # per device, since a kernel reads every table on its own device.
            by_device: dict[torch.device, list[tuple[str, SparseGrad]]] = {}
            for name in reversed(group["table_names"]):
                grad = self._tables[name].sparse_grad()
                if grad is None:
                    continue
                weight = self._tables[name].weight
                if grad.grad_out.dtype != weight.dtype:
                    grad = SparseGrad(
                        grad.ids,
                        grad.offsets,
                        grad.per_sample_weights,
                        grad.grad_out.to(weight.dtype),
                        grad.mean,
                    )
                by_device.setdefault(weight.device, []).append((name, grad))
            for batch in by_device.values():
                self._update(
                    [self._tables[name].weight for name, _ in batch],
                    [grad for _, grad in batch],
                    [self._ensure_state(name, group) for name, _ in batch],
                    group,
                )
        return loss

    # --- per-table state ---

    @property
    def tables(self) -> dict[str, EmbeddingTable]:
        """The tables this optimizer updates, by name."""
        return dict(self._tables)

    def _group_of(self, name: str) -> dict[str, Any]:
        for group in self.param_groups:
            if name in group["table_names"]:
                return group
        raise KeyError(
            f"{type(self).__name__}: no table named {name!r} (tables: {sorted(self._tables)})"
        )

    def table_hyperparameters(self, name: str) -> dict[str, Any]:
        """The hyper-parameters (``lr``, ``eps``, ...; what an LR scheduler changes) of
        the param group holding table ``name``: its plain numbers, flags and tuples of
        numbers, which checkpoints save with the table.

        Example::

            >>> opt.table_hyperparameters("t_user")
            {'lr': 0.05, 'eps': 1e-08, 'weight_decay': 0.0}
        """
        return plain_hyperparameters(self._group_of(name))

    def set_table_hyperparameters(self, name: str, values: Mapping[str, Any]) -> None:
        """Sets those of ``values`` that table ``name``'s param group has (the group's
        other tables share them); a tuple stays a tuple."""
        group = self._group_of(name)
        for key, value in values.items():
            if key in group and key not in ("params", "table_names"):
                group[key] = tuple(value) if isinstance(group[key], tuple) else value

    def table_state_kinds(self, name: str) -> dict[str, str]:
        """Each state tensor of table ``name`` -> ``"element"`` (shaped like the
        weight), ``"row"`` (one value per row) or ``"scalar"``; creates no state.

        Example::

            >>> SparseAdam(filter_out_sparse_param(model), lr=0.01).table_state_kinds("t0")
            {'step': 'scalar', 'exp_avg': 'element', 'exp_avg_sq': 'element'}
        """
        return {key: kind for key, (kind, _) in self._state_spec(self._group_of(name)).items()}

    def _ensure_state(self, name: str, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self._table_states.get(name)
        if state is None:
            weight = self._tables[name].weight
            state = {}
            for key, (kind, init) in self._state_spec(group).items():
                if kind == SCALAR:
                    state[key] = torch.zeros((), dtype=torch.int64, device=weight.device) + int(
                        init
                    )
                else:
                    shape = weight.shape if kind == ELEMENT else weight.shape[:1]
                    state[key] = empty_table(shape, weight.dtype, weight.device).fill_(init)
            self._table_states[name] = state
        return state

    def table_state(self, name: str) -> dict[str, Tensor]:
        """The optimizer state of table ``name`` (created if it was never stepped).

        Each tensor is shaped like the table's local weight ``[rows, cols]``, or
        ``[rows]`` (one value per row), or 0-d (a scalar such as Adam's ``step``).
        The tensors are the live state: copy them before changing them.

        Example::

            >>> opt = SparseRowWiseAdagrad(filter_out_sparse_param(model), lr=0.1)
            >>> opt.table_state("t0")["state_sum"].shape
            torch.Size([1000])
        """
        return dict(self._ensure_state(name, self._group_of(name)))

    def set_table_state(self, name: str, state: Mapping[str, Tensor]) -> None:
        """Replaces the optimizer state of table ``name`` (checkpoint load, resharding).

        ``state`` must hold exactly the keys of :meth:`table_state`, each with the
        shape it has there; values are copied to the weight's device and dtype.
        """
        group = self._group_of(name)
        spec = self._state_spec(group)
        if set(state) != set(spec):
            raise ValueError(
                f"{type(self).__name__}: state of table {name!r} must have keys "
                f"{sorted(spec)}, got {sorted(state)}"
            )
        weight = self._tables[name].weight
        new: dict[str, Tensor] = {}
        for key, (kind, _) in spec.items():
            value = torch.as_tensor(state[key])
            want = {ELEMENT: tuple(weight.shape), ROW: tuple(weight.shape[:1]), SCALAR: ()}[kind]
            if tuple(value.shape) != want:
                raise ValueError(
                    f"{type(self).__name__}: state {key!r} of table {name!r} must have shape "
                    f"{list(want)}, got {list(value.shape)}"
                )
            dtype = torch.int64 if kind == SCALAR else weight.dtype
            new[key] = value.detach().to(device=weight.device, dtype=dtype).clone().contiguous()
        self._table_states[name] = new

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {table: {name: tensor}}, "param_groups": [...]}`` like torch's."""
        groups, index = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["table_names"] = list(group["table_names"])
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        state = {name: self.table_state(name) for name in self._tables}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores hyper-parameters and per-table state saved by :meth:`state_dict`."""
        groups = state_dict["param_groups"]
        saved_names = [n for g in groups for n in g["table_names"]]
        ours = [n for g in self.param_groups for n in g["table_names"]]
        if len(groups) != len(self.param_groups) or saved_names != ours:
            raise ValueError(
                f"{type(self).__name__}: the state dict is for tables {saved_names}, "
                f"this optimizer has {ours}"
            )
        for name, table_state in state_dict["state"].items():
            if name not in self._tables:
                raise ValueError(f"{type(self).__name__}: state for unknown table {name!r}")
            self.set_table_state(name, table_state)
        for group, saved in zip(self.param_groups, groups, strict=True):
            for key, value in saved.items():
                if key not in ("params", "table_names"):
                    group[key] = value
