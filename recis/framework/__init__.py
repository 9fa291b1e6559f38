"""Training framework: Trainer, checkpointing, metrics."""
