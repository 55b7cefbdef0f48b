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
their targets), with dropout OFF. Which memory a segment sees is
`config.diagnostics.memory` (recorded in config.json, so every row's function is known):
- 'preceding' (the text twin, `configs/text_transformerxl.py`): the memory the segment's
  preceding `mem_len` tokens leave at the same weights, as training evaluates a segment.
  The preceding tokens run through the model on an empty memory, and their memory enters
  behind a stop_gradient, as in training: the round's loss, gradient and Hessian are
  those of the function the train step differentiates (weights -> segment loss at a fixed
  memory). With no dropout in the model, a round's segment loss equals the train step's
  loss on the same segment, weights and memory.
- 'empty' (the WikiText-103 config): an EMPTY memory, the deterministic function of the
  weights that a fresh segment's loss is. It is not the function training minimises
  (which sees up to `mem_len` earlier tokens through the memory, and dropout), so
  `full_loss` sits below `train_loss` by more than sampling noise.
Where the data set has a held-out split (`pydoc_topics`), the first two minibatches of a
round also carry random held-out segments, evaluated the same way, for `heldout_loss`.
"""

from __future__ import annotations

import dataclasses
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invmeasure.data import lm, pydoc_text, text_sources
from invmeasure.models import registry
from invmeasure.models.transformer_xl import Memory, TransformerXL, init_variables
from invmeasure.training import optim, state as state_lib, step as step_lib
from invmeasure.training.errors import ConfigError
from invmeasure.training.state import RunState


def carried_memory(memory: Memory, memory_length: jax.Array) -> Memory:
  """The memory a step starts from: what the last step left, cut to `memory_length` [B]
  real slots per row (0: emptied, as at the start of an epoch)."""
  length = jnp.minimum(memory.length, memory_length)
  hidden = jnp.where((length > 0)[:, None, None, None], memory.hidden, 0)
  return Memory(hidden, length.astype(memory.length.dtype))


DIAGNOSTIC_MEMORIES = ("empty", "preceding")
HELDOUT = "heldout_"  # the prefix of a minibatch's held-out segments' keys


def _segments(windows: np.ndarray, prefix: int, key: str = "") -> dict[str, np.ndarray]:
  """Windows of P + T + 1 tokens -> the P tokens before the segment (when P > 0), inputs
  (the next T) and targets (the last T)."""
  out = {f"{key}inputs": windows[:, prefix:-1], f"{key}targets": windows[:, prefix + 1:]}
  if prefix:
    out[f"{key}prefix"] = windows[:, :prefix]
  return out


def _check_corpus(config: ml_collections.ConfigDict) -> None:
  """A pydoc_topics run's recorded corpus must be this interpreter's (it changes by release)."""
  recorded = config.get("corpus")
  if config.dataset != "pydoc_topics" or recorded is None:
    return
  found = pydoc_text.corpus_record()
  if recorded.get("sha256") != found["sha256"]:
    raise ConfigError(
        f"config.corpus.sha256={recorded.get('sha256')} (Python "
        f"{recorded.get('python_version')}) is not this interpreter's pydoc_topics corpus "
        f"({found['sha256']}, Python {found['python_version']}); run it with that Python "
        "or start a new workdir")


@dataclasses.dataclass(frozen=True)
class LanguageModelTask:
  """Transformer-XL trained on a token stream (see `tasks.Task` for the interface)."""
  model: TransformerXL
  optimization: step_lib.Optimization
  segments: lm.Segments        # the training stream's rows, segments and memory resets
  stream: lm.TokenStream | None  # None: sizes only (a dry run reads no data)
  weight_decay: float          # lambda of F = f + lambda/2 ||x||^2 (0: decoupled decay)
  seed: int
  per_step: tuple[str, ...] = ()  # quantities the train step measures (step.PER_STEP)
  diagnostic_memory: str = "empty"  # what memory a round's segment sees (module docstring)
  heldout: lm.TokenStream | None = None  # held-out stream for `heldout_loss`, if any
  # The prefetch thread and the diagnostic round share the stream and its chunk cache.
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False,
                                            compare=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  abstract: bool = False) -> LanguageModelTask:
    """The task of a checked config; `abstract` plans with the known corpus sizes."""
    memory = config.diagnostics.get("memory", "empty")
    if memory not in DIAGNOSTIC_MEMORIES:
      raise ConfigError(f"config.diagnostics.memory={memory!r} is unknown; choose one of "
                        f"{', '.join(DIAGNOSTIC_MEMORIES)}")
    heldout = None
    if abstract:
      stream = None
      num_tokens, vocab_size = text_sources.train_sizes(config.dataset)
    else:
      _check_corpus(config)
      stream, vocab_size = text_sources.load_stream(config.dataset, "train",
                                                    config.get("data_dir"))
      num_tokens = len(stream)
      if config.dataset == "pydoc_topics":
        heldout, _ = text_sources.load_stream(config.dataset, "heldout")
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
               weight_decay=optim.objective_weight_decay(config),
               seed=int(config.seed), per_step=step_lib.per_step_names(config),
               diagnostic_memory=memory, heldout=heldout)

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

  @property
  def _prefix_length(self) -> int:
    """Tokens before each diagnostic segment that make its memory."""
    return self.model.mem_len if self.diagnostic_memory == "preceding" else 0

  def segment_loss(self, params, batch: dict, key: str = "") -> jax.Array:
    """Dropout-off loss of the segment `batch[key + 'inputs']`, on the memory its
    `key + 'prefix'` tokens leave at `params` (an empty one without a prefix)."""
    memory = None
    if f"{key}prefix" in batch:
      _, memory = self.model.apply({"params": params}, batch[f"{key}prefix"], None, False)
    segment = {"inputs": batch[f"{key}inputs"], "targets": batch[f"{key}targets"]}
    return self.loss(params, segment, memory)[0]

  def diagnostic_loss(self, state: RunState, minibatch: dict):
    """The round's loss on random training segments, dropout off (module docstring)."""
    del state  # the loss is the same function of the weights at every step
    batch = {k: v for k, v in minibatch.items() if not k.startswith(HELDOUT)}
    return self.segment_loss, batch

  def diagnostic_fns(self) -> step_lib.DiagnosticFns:
    fns = step_lib.make_diagnostic_fns(self.diagnostic_loss, self.optimization.tx,
                                       self.weight_decay)
    if self.heldout is None:
      return fns

    def summarize(state, acc, minibatch, other_minibatch, eigenvalue, residual):
      row = fns.summarize(state, acc, minibatch, other_minibatch, eigenvalue, residual)
      losses = [self.segment_loss(state.params, m, HELDOUT) for m in (minibatch,
                                                                       other_minibatch)]
      return {**row, "heldout_loss": (losses[0] + losses[1]) / 2}

    return fns._replace(summarize=summarize)

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
    """This process's rows of K random segments (with the tokens before them, for their
    memory, and held-out segments where there are), from generators of (seed, step)."""
    rows = self._rows(batch_size)
    shape = (num_minibatches, batch_size)
    batches = self._random_segments(self.stream, np.random.default_rng([self.seed, step, 1]),
                                    shape, rows)
    if self.heldout is not None:
      heldout = self._random_segments(self.heldout,
                                      np.random.default_rng([self.seed, step, 2]), shape,
                                      rows, HELDOUT)
      batches = [{**b, **h} for b, h in zip(batches, heldout)]
    return batches

  def _random_segments(self, stream: lm.TokenStream, rng: np.random.Generator,
                       shape: tuple[int, int], rows: range, key: str = "") -> list[dict]:
    tgt_len, prefix = self.segments.tgt_len, self._prefix_length
    starts = rng.integers(prefix, len(stream) - tgt_len, size=shape) - prefix
    with self._lock:
      return [_segments(stream.windows(row[rows.start:rows.stop], prefix + tgt_len + 1),
                        prefix, key) for row in starts]

  def abstract_batch(self, batch_size: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    tokens = jax.ShapeDtypeStruct((batch_size, self.segments.tgt_len), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens}
    if train:
      batch["memory_length"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
      return batch
    keys = [""] + ([HELDOUT] if self.heldout is not None else [])
    for key in keys:
      batch.update({f"{key}inputs": tokens, f"{key}targets": tokens})
      if self._prefix_length:
        batch[f"{key}prefix"] = jax.ShapeDtypeStruct((batch_size, self._prefix_length),
                                                     jnp.int32)
    return batch
