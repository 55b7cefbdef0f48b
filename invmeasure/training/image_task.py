"""Image classification: the task of the ImageNet, CIFAR-10 and quickstart configs.

Training batches walk a fresh permutation of the training set every epoch and diagnostic
minibatches are drawn apart from them (`invmeasure.data.batching`), both read from a
random-access source, so the batches of any step are a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invmeasure.data import augment, batching, image_reads, loader, sources
from invmeasure.models import losses, registry
from invmeasure.errors import ConfigError
from invmeasure.training import optim, state as state_lib, step as step_lib
from invmeasure.training.state import RunState


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """A classifier trained on labelled images (see `tasks.Task` for the interface)."""
  model: nn.Module
  optimization: step_lib.Optimization
  dataset: str                 # selects the normalisation statistics
  augmentation: str            # one of augment.AUGMENTATIONS
  augmentation_shift: int      # 'shift_noise': largest shift in pixels, each way
  augmentation_noise_std: float  # 'shift_noise': Gaussian pixel noise, in normalised units
  diagnostic_augment: bool     # diagnostic minibatches augmented as training batches are
  per_step: tuple[str, ...]    # quantities the train step measures (step.PER_STEP)
  per_example_chunk_size: int  # examples per chunk of per-example gradients (0: all)
  tic_probes: int              # Hutchinson probes of the per-step TIC's tr(H)
  weight_decay: float          # lambda of F = f + lambda/2 ||x||^2 (0: decoupled decay)
  seed: int
  batch_size: int              # global training batch
  image_shape: tuple[int, ...]  # one example as the device sees it
  source: sources.Source | None  # None: sizes only (a dry run reads no data)
  num_examples: int
  data_workers: int = 0        # processes that read and crop batches (0: the loop's thread)
  # The training stream (`loader.Batches`), made at the first read; mutable state of a
  # frozen task, which never changes what a step reads.
  _streams: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, abstract: bool = False) -> ImageTask:
    """The task of a checked config; `abstract` plans with the known training-set size."""
    model = registry.make_model(config.model, int(config.num_classes))
    if abstract:
      source, num_examples = None, sources.NUM_TRAIN_EXAMPLES[config.dataset]
    else:
      source = sources.load_source(config.dataset, "train", config.get("data_dir"))
      num_examples = len(source)
    subset = int(config.get("train_examples", 0))
    if subset > num_examples:
      raise ConfigError(f"config.train_examples={subset} exceeds the {num_examples} training "
                        f"examples of {config.dataset}; use at most {num_examples} (0: all)")
    if subset:
      num_examples = subset
      source = sources.FirstExamples(source, subset) if source is not None else None
    steps_per_epoch = batching.steps_per_epoch(num_examples, config.batch_size)
    if steps_per_epoch < 1:
      raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {num_examples} "
                        f"training examples of {config.dataset}")
    return cls(model=model, optimization=step_lib.make_optimization(config, steps_per_epoch),
               dataset=config.dataset, augmentation=config.get("augmentation", "none"),
               augmentation_shift=int(config.get("augmentation_shift", 1)),
               augmentation_noise_std=float(config.get("augmentation_noise_std", 0.0)),
               diagnostic_augment=config.diagnostics.get("augment", "train") == "train",
               per_step=step_lib.per_step_names(config),
               per_example_chunk_size=int(config.diagnostics.get("per_example_chunk_size", 0)),
               tic_probes=int(config.diagnostics.get("tic_probes", 1)),
               weight_decay=optim.objective_weight_decay(config),
               seed=int(config.seed), batch_size=int(config.batch_size),
               image_shape=sources.IMAGE_SHAPES[config.dataset], source=source,
               num_examples=num_examples, data_workers=_data_workers(config))

  def preprocess(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
    """uint8 images -> normalised floats, augmented as training batches are if `key`."""
    if key is None or self.augmentation == "none":
      return augment.normalize(self.dataset, images)
    if self.augmentation == "crop_flip":
      return augment.normalize(self.dataset, augment.random_crop_flip(key, images, padding=4))
    shift_key, noise_key = jax.random.split(key)  # 'shift_noise'
    images = augment.normalize(
        self.dataset, augment.random_shift(shift_key, images, self.augmentation_shift))
    return images + self.augmentation_noise_std * jax.random.normal(noise_key, images.shape,
                                                                     images.dtype)

  def batch_loss(self, params, model_state, images, labels, dropout_key):
    """Mean loss in training mode and the updated model state (BatchNorm statistics)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": dropout_key}
    if model_state:
      logits, new_state = self.model.apply(variables, images, train=True,
                                           mutable=list(model_state), rngs=rngs)
    else:
      logits, new_state = self.model.apply(variables, images, train=True, rngs=rngs), model_state
    return losses.softmax_cross_entropy(logits, labels), new_state

  def init_run_state(self, key: jax.Array) -> RunState:
    example = self.preprocess(jnp.zeros((1, *self.image_shape), jnp.uint8), None)
    return state_lib.init_run_state(lambda k: self.model.init(k, example, train=False),
                                    self.optimization.tx, key, per_step=self.per_step)

  def train_step(self, state: RunState, batch: dict) -> tuple[RunState, dict]:
    augment_key, dropout_key = jax.random.split(step_lib.step_key(self.seed, state.step))
    images = self.preprocess(batch["image"], augment_key)
    grad_fn = jax.value_and_grad(self.batch_loss, has_aux=True)
    (loss, model_state), grads = grad_fn(state.params, state.model_state, images,
                                         batch["label"], dropout_key)
    step_loss = lambda p: self.batch_loss(p, state.model_state, images, batch["label"],  # noqa: E731
                                          dropout_key)[0]
    per_example = None
    if step_lib.needs_per_example(self.per_step):
      per_example = self.per_example(state, images, batch["label"], grads, dropout_key)
    return step_lib.apply_gradients(self.optimization.tx, state, loss, grads,
                                    per_step=self.per_step, step_loss=step_loss,
                                    per_example=per_example, model_state=model_state)

  def per_example(self, state: RunState, images: jax.Array, labels: jax.Array, grads,
                  dropout_key: jax.Array) -> step_lib.PerExample:
    """The step's loss as the per-example instruments take it. With BatchNorm, its
    statistics are frozen at the batch's own (the loss keeps its value; the mean
    per-example gradient lacks the path through the statistics, so it is computed
    apart); otherwise the per-example losses average to the step's loss and the step's
    gradient is their mean (dropout, if any, draws a mask per example)."""
    if state.model_state:
      loss_fn = losses.frozen_batch_stats_loss_fn(self.model, state.params, state.model_state,
                                                  images)
      mean_gradient = None
    else:
      loss_fn = lambda p, b: self.batch_loss(p, {}, b["image"], b["label"], dropout_key)[0]  # noqa: E731
      mean_gradient = grads
    return step_lib.PerExample(
        loss_fn=loss_fn, batch={"image": images, "label": labels},
        mean_gradient=mean_gradient,
        learning_rate=self.optimization.schedule(state.step),
        key=jax.random.fold_in(step_lib.step_key(self.seed, state.step), 1),
        chunk_size=self.per_example_chunk_size or None, tic_probes=self.tic_probes)

  def diagnostic_loss(self, state: RunState, minibatch: dict):
    """The round's loss and its batch: the training-mode function (BatchNorm on each
    minibatch's own statistics, running averages untouched, one fixed dropout mask per
    step) on training images augmented as training batches are, each example with a key
    of its own from (seed, step, its place in the round) (`diagnostics.augment='train'`),
    or un-augmented ('none'). Averaged over the round, this estimates the objective SGD
    follows: the expectation over the data and the augmentation."""
    key = step_lib.step_key(self.seed + 1, state.step)
    loss_fn = losses.linen_loss_fn(self.model, state.model_state, train=True, dropout_key=key)
    images = minibatch["image"]
    if "augment_index" in minibatch:
      base = step_lib.step_key(self.seed + 2, state.step)
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(minibatch["augment_index"])
      images = augment.per_example(lambda k, x: self.preprocess(x, k), keys, images)
    else:
      images = self.preprocess(images, None)
    return loss_fn, {"image": images, "label": minibatch["label"]}

  def diagnostic_fns(self) -> step_lib.DiagnosticFns:
    return step_lib.make_diagnostic_fns(self.diagnostic_loss, self.optimization.tx,
                                        self.weight_decay)

  def _reader(self) -> image_reads.Reader:
    return image_reads.Reader(self.source, jax.process_index(), jax.process_count())

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step `step`'s batch, from `data_workers` processes that read
    the steps after it ahead, in order (`loader.Batches`)."""
    if "train" not in self._streams:
      read = image_reads.TrainRead(self._reader(), self.seed, self.batch_size, self.num_examples)
      self._streams["train"] = loader.Batches(read, self.optimization.num_steps + 1,
                                              self.data_workers)
    return self._streams["train"].get(step)

  def close_data(self) -> None:
    """Stops the data workers."""
    stream = self._streams.pop("train", None)
    if stream is not None:
      stream.close()

  def diagnostic_batches(self, step: int, num_minibatches: int,
                         batch_size: int) -> list[dict[str, np.ndarray]]:
    """The round's K minibatches; augmented ones carry `augment_index` (each example's
    place in the round, which keys its on-device augmentation) and get the host's
    augmentation (ImageNet's crops) from a seed of (seed, step, stream, k)."""
    indices = batching.diagnostic_indices(self.seed, step, num_minibatches, batch_size,
                                          self.num_examples)
    read = image_reads.DiagnosticRead(self._reader(), self.seed, step, indices,
                                      self.diagnostic_augment)
    minibatches = loader.read_all(read, num_minibatches, self.data_workers)
    if self.augments_diagnostics:
      for k, minibatch in enumerate(minibatches):
        places = k * batch_size + np.arange(batch_size, dtype=np.int32)
        minibatch["augment_index"] = batching.process_slice(places, jax.process_index(),
                                                            jax.process_count())
    return minibatches

  @property
  def augments_diagnostics(self) -> bool:
    """Whether diagnostic minibatches carry `augment_index` (augmented on the device)."""
    return self.diagnostic_augment and self.augmentation != "none"

  def abstract_batch(self, batch_size: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    batch = {"image": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.uint8),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    if not train and self.augments_diagnostics:
      batch["augment_index"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return batch


def _data_workers(config: ml_collections.ConfigDict) -> int:
  """`config.data_workers`: processes that read and crop batches; -1: one per core this
  process may use (0: read in the loop's thread)."""
  workers = int(config.get("data_workers", 0))
  if workers < -1:
    raise ConfigError(f"config.data_workers={workers}; use -1 (one per core), 0 (no worker "
                      "processes) or a number of processes")
  return loader.available_cores() if workers == -1 else workers
