"""Training: DeepSpeed engine, the loop, checkpoints, monitoring. Entry: python -m llada_ds.train."""
