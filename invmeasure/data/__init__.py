"""Input pipelines: random-access training sets and the batches drawn from them."""
