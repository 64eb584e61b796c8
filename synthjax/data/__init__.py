"""Data sources and the batching pipeline.

`get_source(config.data)` returns an in-memory or random-access source of
`{'image': uint8 HWC, 'label': int32}` records; `build_pipeline` turns it into
a checkpointable iterator of per-process numpy batches.
"""
from synthjax.data.sources import DataSource, bundled_split_indices, get_source, holdout_indices, load_bundled_mnist
from synthjax.data.pipeline import Pipeline, build_pipeline, feed_calls

__all__ = ["DataSource", "bundled_split_indices", "get_source", "holdout_indices", "load_bundled_mnist", "Pipeline", "build_pipeline", "feed_calls"]
