"""Language modelling with Transformer-XL: the task of the WikiText-103 config (Figure 3).

Training follows the original code: the training stream is cut into `batch_size` rows and
step t reads the t-th segment of `tgt_len` tokens of every row (`invmeasure.data.lm`), on
the memory the previous step left, so each row is read in order with segment-level
recurrence. The memory (`transformer_xl.Memory`) is the run state's `task_state`, split
by rows over the devices like the batch, and checkpointed with it, so a resumed run
continues bit for bit. It is emptied (length 0) at the start of each epoch, as
`Segments.memory_length` says. The loss is the mean token negative log-likelihood
(`TransformerXL.loss`), with dropout keyed by fold_in(seed, step).

Diagnostic rounds measure the loss on K random segments: each of `batch_size` rows starts
at a uniformly random position of the training stream and holds `tgt_len` tokens (plus
their targets), evaluated with an EMPTY memory and dropout OFF, i.e. the deterministic
function of the weights that a fresh segment's loss is. It is not the function training
minimises (which sees up to `mem_len` earlier tokens through the memory, and dropout), so
`full_loss` and `train_loss` differ by more than sampling noise.
"""

from __future__ import annotations

import dataclasses
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invmeasure.data import lm, text_sources
from invmeasure.models import registry
from invmeasure.models.transformer_xl import Memory, TransformerXL, init_variables
from invmeasure.training import state as state_lib, step as step_lib
from invmeasure.training.errors import ConfigError
from invmeasure.training.state import RunState


def carried_memory(memory: Memory, memory_length: jax.Array) -> Memory:
  """The memory a step starts from: what the last step left, cut to `memory_length` [B]
  real slots per row (0: emptied, as at the start of an epoch)."""
  length = jnp.minimum(memory.length, memory_length)
  hidden = jnp.where((length > 0)[:, None, None, None], memory.hidden, 0)
  return Memory(hidden, length.astype(memory.length.dtype))


def _inputs_and_targets(windows: np.ndarray) -> dict[str, np.ndarray]:
  """Windows of T + 1 tokens -> inputs (the first T) and targets (the last T)."""
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


@dataclasses.dataclass(frozen=True)
class LanguageModelTask:
  """Transformer-XL trained on a token stream (see `tasks.Task` for the interface)."""
  model: TransformerXL
  optimization: step_lib.Optimization
  segments: lm.Segments        # the training stream's rows, segments and memory resets
  stream: lm.TokenStream | None  # None: sizes only (a dry run reads no data)
  weight_decay: float          # lambda of F = f + lambda/2 ||x||^2
  seed: int
  per_step: tuple[str, ...] = ()  # quantities the train step measures (step.PER_STEP)
  # The prefetch thread and the diagnostic round share the stream and its chunk cache.
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                            compare=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  abstract: bool = False) -> LanguageModelTask:
    """The task of a checked config; `abstract` plans with the known corpus sizes."""
    if abstract:
      stream = None
      num_tokens, vocab_size = text_sources.train_sizes(config.dataset)
    else:
      stream, vocab_size = text_sources.load_stream(config.dataset, "train",
                                                    config.get("data_dir"))
      num_tokens = len(stream)
    model = registry.make_model(config.model, vocab_size)
    try:
      segments = lm.train_segments(num_tokens, int(config.batch_size), model.tgt_len,
                                   model.mem_len)
    except ValueError:
      raise ConfigError(
          f"config.batch_size={config.batch_size} rows of the {num_tokens} tokens of "
          f"{config.dataset} hold no segment of config.model.tgt_len={model.tgt_len} "
          "tokens; lower either") from None
    return cls(model=model,
               optimization=step_lib.make_optimization(config, segments.num_steps),
               segments=segments, stream=stream,
               weight_decay=float(config.optimizer.get("weight_decay", 0.0)),
               seed=int(config.seed), per_step=step_lib.per_step_names(config))

  def loss(self, params, batch: dict, memory: Memory | None,
           dropout_key: jax.Array | None = None) -> tuple[jax.Array, Memory]:
    """Mean token NLL of `batch` after `memory` (None: empty), and the new memory.

    Dropout is on when a `dropout_key` is given, off otherwise.
    """
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return self.model.apply({"params": params}, batch["inputs"], batch["targets"], memory,
                            dropout_key is not None, method="loss", rngs=rngs)

  def init_run_state(self, key: jax.Array) -> RunState:
    return state_lib.init_run_state(lambda k: init_variables(self.model, k),
                                    self.optimization.tx, key,
                                    task_state=self.model.init_mems(self.segments.batch_size),
                                    per_step=self.per_step)

  def train_step(self, state: RunState, batch: dict) -> tuple[RunState, dict]:
    memory = carried_memory(state.task_state, batch["memory_length"])
    dropout_key = step_lib.step_key(self.seed, state.step)
    grad_fn = jax.value_and_grad(lambda p: self.loss(p, batch, memory, dropout_key),
                                 has_aux=True)
    (loss, new_memory), grads = grad_fn(state.params)
    step_loss = lambda p: self.loss(p, batch, memory, dropout_key)[0]  # noqa: E731
    return step_lib.apply_gradients(self.optimization.tx, state, loss, grads,
                                    per_step=self.per_step, step_loss=step_loss,
                                    task_state=new_memory)

  def diagnostic_loss(self, state: RunState, minibatch: dict):
    """The round's loss: random segments, empty memory, dropout off (module docstring)."""
    del state  # the loss is the same function of the weights at every step
    return (lambda params, batch: self.loss(params, batch, None)[0]), minibatch

  def diagnostic_fns(self) -> step_lib.DiagnosticFns:
    return step_lib.make_diagnostic_fns(self.diagnostic_loss, self.optimization.tx,
                                        self.weight_decay)

  def _rows(self, batch_size: int) -> range:
    return lm.process_rows(batch_size, jax.process_index(), jax.process_count())

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step `step`, and how much of the memory belongs to them."""
    with self._lock:
      batch = lm.segment_batch(self.stream, self.segments, step, jax.process_index(),
                               jax.process_count())
    rows = len(self._rows(self.segments.batch_size))
    batch["memory_length"] = np.full(rows, self.segments.memory_length(step), np.int32)
    return batch

  def diagnostic_batches(self, step: int, num_minibatches: int,
                         batch_size: int) -> list[dict[str, np.ndarray]]:
    """This process's rows of K random segments, from a generator of (seed, step)."""
    tgt_len = self.segments.tgt_len
    rng = np.random.default_rng([self.seed, step, 1])
    starts = rng.integers(0, self.segments.num_tokens - tgt_len,
                          size=(num_minibatches, batch_size))
    rows = self._rows(batch_size)
    with self._lock:
      return [_inputs_and_targets(self.stream.windows(row[rows.start:rows.stop], tgt_len + 1))
              for row in starts]

  def abstract_batch(self, batch_size: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    tokens = jax.ShapeDtypeStruct((batch_size, self.segments.tgt_len), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens}
    if train:
      batch["memory_length"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return batch
