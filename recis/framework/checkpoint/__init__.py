"""Sharded checkpoint machinery behind :mod:`recis.framework.checkpoint_manager`.

One job per module: ``storage`` (local paths and fsspec URLs), ``integrity``
(block checksums), ``tensor_file`` (safetensors files written and read by slices),
``tree`` (nested state to JSON + tensors), ``layout`` (which rank writes which
box of which table), ``save`` (a rank's snapshot, its files, the manifest body),
``writer`` (parallel writer threads), ``reader`` (resharding reads), ``manifest``
(the commit record), ``commit`` (atomic publish, pruning, the claim on an output
directory), ``shared_dir`` (do the ranks see one directory), ``disk_space`` (room
for a checkpoint), ``dense`` (the model's dense state), ``load`` (restoring a
checkpoint's categories), ``manager`` (CheckpointManager: periodic saves and the
resume) and ``summary`` (``python -m recis.framework.checkpoint PATH [--verify]``).
"""
