"""Inference: the batcher (frames of all cameras into batches) and the detector stage that runs an engine on them."""
