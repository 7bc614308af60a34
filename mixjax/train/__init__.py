"""SFT training: optimizer, sharded functional steps, checkpointing, the training loop."""
