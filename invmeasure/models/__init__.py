"""Flax models and the loss functions that turn them into `loss_fn(params, batch)`."""
