"""The pipeline runtime: source -> batcher -> detector -> tracker -> publisher."""
