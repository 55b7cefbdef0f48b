"""Transformer-XL (Dai et al. 2019) in Flax Linen, as the original WikiText-103 code defines it.

The language model of the original PyTorch code (`MemTransformerLM` with its default
attention, `attn_type=0`):
- Input: adaptive input embeddings (Baevski & Auli) over the vocabulary clusters cut at
  `cutoffs`, cluster i of width `d_embed // div_val**i` projected to `d_model`; one plain
  table (projected only when `d_embed != d_model`) when `div_val == 1` or `cutoffs` is
  empty. Embeddings are scaled by sqrt(d_model).
- Layers: relative multi-head attention (one fused bias-free q/k/v projection, a bias-free
  projection of the sinusoidal relative position embedding R, the global content bias u
  (`r_w_bias`) and position bias v (`r_r_bias`), shared by all layers unless `untie_r`,
  the "relative shift" that turns scores against R into scores by distance), then a ReLU
  feed-forward network of width `d_inner`; each sub-layer is residual with LayerNorm after
  the sum (`pre_lnorm=False`, the original) or on its input (`pre_lnorm=True`).
- Dropout (`dropout`) on the embeddings, on R, after each sub-layer's output projection,
  inside the feed-forward network and on the last hidden state; `dropatt` on the attention
  probabilities. Both only with `train=True`, drawing from the 'dropout' rng.
- Output: the projected adaptive softmax (Grave et al.): a head over the `cutoffs[0]` most
  frequent tokens plus one logit per tail cluster, a softmax inside each tail cluster;
  `tie_weight` shares the output word vectors with the input tables (the output biases
  stay separate) and `tie_projs[i]` shares cluster i's output projection with its input
  projection. Without cutoffs it is a plain (tied or untied) softmax with a bias. As in the
  original, tail cluster i (from 1) takes the head logit at index `cutoffs[0] + n - i` of the
  n cluster logits (the last for the first tail), so weights port across unchanged. The
  loss is exact: a tail cluster's softmax is computed for the positions whose target is in
  it, `softmax_chunk` positions at a time, with the rounds no position needs skipped.
- Initialisation as the original's `train.py`: weights, embeddings, cluster vectors and u, v
  from N(0, 0.02); projections from N(0, 0.01); biases 0; LayerNorm scales from N(1, 0.02).
- `clamp_len > 0` gives every distance beyond it the embedding of `clamp_len`;
  `same_length` lets every query attend to exactly the `mem_len` latest positions (the
  original's evaluation setting).

Memory. A `Memory` holds, for each layer, the last `mem_len` inputs of that layer (the
embedding output for the first layer, the previous layer's output for the others), as one
fixed-shape array [B, n_layer, mem_len, d_model], with `length` [B] counting the slots that
hold real states: they are the latest ones, and the first `mem_len - length` slots are
masked out of the attention. A segment of T tokens attends to the mem_len memory slots and
to its own positions up to each query, and leaves as new memory the last mem_len states of
(memory ++ segment), behind `jax.lax.stop_gradient`, with length min(length + T, mem_len).
`init_mems` gives empty memory (all slots masked), so the first segment computes exactly
what the original computes with no memory, and every segment has the same shapes, so a
jitted train step compiles once. (The original also keeps the last layer's output, which no
layer reads; it is left out here.) The incoming memory is also behind a stop_gradient: as
in the original, a segment's loss is a function of the parameters alone.

`dtype` sets the compute dtype (e.g. bfloat16) of the network and the memory; parameters
are `param_dtype`; attention probabilities and log-probabilities are computed in float32
(or wider).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from invmeasure.errors import ConfigError

Array = jax.Array
Initializer = Callable[..., Array]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


class Memory(NamedTuple):
  """The hidden states a segment leaves to the next (see the module docstring)."""
  hidden: Array  # [B, n_layer, mem_len, d_model]: each layer's latest inputs, oldest first
  length: Array  # [B] int32: how many of the latest slots hold real states


def rel_shift(x: Array) -> Array:
  """Scores against R (key axis k, distance K - 1 - k) to scores by key (distance M + i - j).

  `x` is [..., T, K] with K = M + T; entry [i, j] of the result is x[i, T - 1 + j - i], i.e.
  query i's score for the embedding of its distance M + i - j to key j, for j <= M + i. The
  entries of later keys hold other values and must be masked. One pad and two reshapes
  instead of a gather.
  """
  *lead, t, k = x.shape
  x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
  x = x.reshape(*lead, k + 1, t)[..., 1:, :]
  return x.reshape(*lead, t, k)


def sinusoid_embedding(positions: Array, dim: int) -> Array:
  """[sin(p w), cos(p w)] with frequencies w_k = 10000^(-2k / dim), for each position p."""
  inv_freq = 1.0 / 10000 ** (jnp.arange(0, dim, 2, dtype=positions.dtype) / dim)
  angles = positions[:, None] * inv_freq[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def cluster_bounds(vocab_size: int, cutoffs: Sequence[int]) -> list[tuple[int, int]]:
  """The token-id range [start, end) of each vocabulary cluster, most frequent first."""
  ends = [0, *cutoffs, vocab_size]
  return list(zip(ends[:-1], ends[1:]))


def _layernorm_scale_init(std: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    return 1.0 + std * jax.random.normal(key, shape, dtype)

  return init


def _logits(hidden: Array, weight: Array, bias: Array, proj: Array | None,
            dtype: Any) -> Array:
  """hidden [..., d_proj] (through proj [d_proj, d]) against word vectors weight [n, d].

  Computed in `dtype`, accumulated and returned in float32 (or wider).
  """
  out_dtype = jnp.promote_types(dtype, jnp.float32)
  hidden = jnp.asarray(hidden, dtype)
  if proj is not None:
    hidden = hidden @ jnp.asarray(proj, dtype)
  logits = jnp.matmul(hidden, jnp.asarray(weight, dtype).T, preferred_element_type=out_dtype)
  return logits + jnp.asarray(bias, out_dtype)


class AdaptiveEmbedding(nn.Module):
  """Adaptive input embeddings, scaled by sqrt(d_proj): [B, T] ids -> [B, T, d_proj]."""
  vocab_size: int
  d_embed: int
  d_proj: int
  cutoffs: Sequence[int] = ()
  div_val: int = 1
  init_std: float = 0.02
  proj_init_std: float = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self) -> None:
    emb_init = nn.initializers.normal(self.init_std)
    proj_init = nn.initializers.normal(self.proj_init_std)
    if self.div_val == 1:
      self.tables = (self.param("emb_0", emb_init, (self.vocab_size, self.d_embed),
                                self.param_dtype),)
      self.projs = ((self.param("proj_0", proj_init, (self.d_proj, self.d_embed),
                                self.param_dtype),)
                    if self.d_proj != self.d_embed else (None,))
    else:
      bounds = cluster_bounds(self.vocab_size, self.cutoffs)
      widths = [self.d_embed // self.div_val ** i for i in range(len(bounds))]
      self.tables = tuple(self.param(f"emb_{i}", emb_init, (end - start, width),
                                     self.param_dtype)
                          for i, ((start, end), width) in enumerate(zip(bounds, widths)))
      self.projs = tuple(self.param(f"proj_{i}", proj_init, (self.d_proj, width),
                                    self.param_dtype) for i, width in enumerate(widths))

  def __call__(self, tokens: Array) -> Array:
    if self.div_val == 1:
      out = jnp.asarray(jnp.take(self.tables[0], tokens, axis=0), self.dtype)
      if self.projs[0] is not None:
        out = out @ jnp.asarray(self.projs[0], self.dtype).T
    else:
      out = jnp.zeros((*tokens.shape, self.d_proj), self.dtype)
      for (start, end), table, proj in zip(cluster_bounds(self.vocab_size, self.cutoffs),
                                           self.tables, self.projs):
        inside = (tokens >= start) & (tokens < end)
        rows = jnp.take(table, jnp.clip(tokens - start, 0, end - start - 1), axis=0)
        vectors = jnp.asarray(rows, self.dtype) @ jnp.asarray(proj, self.dtype).T
        out = out + jnp.where(inside[..., None], vectors, 0)
    return out * jnp.asarray(math.sqrt(self.d_proj), self.dtype)


class ProjectedAdaptiveLogSoftmax(nn.Module):
  """The output distribution: projected adaptive softmax, or a plain one without cutoffs.

  Its methods take the input embedding's `tables` and `projs`, which it uses for the
  parameters tied to them (`tie_weight`, `tie_projs`).
  """
  vocab_size: int
  d_embed: int
  d_proj: int
  cutoffs: Sequence[int] = ()
  div_val: int = 1
  tie_weight: bool = True
  tie_projs: Sequence[bool] = (False,)  # one per cluster, the head first
  chunk_size: int = 1024  # tail-cluster tokens scored together (see `target_log_probs`)
  init_std: float = 0.02
  proj_init_std: float = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self) -> None:
    bounds = cluster_bounds(self.vocab_size, self.cutoffs)
    weight_init = nn.initializers.normal(self.init_std)
    proj_init = nn.initializers.normal(self.proj_init_std)
    zeros = nn.initializers.zeros
    if self.cutoffs:
      n = len(self.cutoffs)
      self.cluster_weight = self.param("cluster_weight", weight_init, (n, self.d_embed),
                                       self.param_dtype)
      self.cluster_bias = self.param("cluster_bias", zeros, (n,), self.param_dtype)
    if self.div_val == 1:
      self.weights = (None if self.tie_weight else
                      self.param("weight_0", weight_init, (self.vocab_size, self.d_embed),
                                 self.param_dtype),)
      self.biases = (self.param("bias_0", zeros, (self.vocab_size,), self.param_dtype),)
      self.projs = tuple(
          self.param(f"proj_{i}", proj_init, (self.d_proj, self.d_embed), self.param_dtype)
          if self.d_proj != self.d_embed and not self.tie_projs[i] else None
          for i in range(len(bounds)))
    else:
      widths = [self.d_embed // self.div_val ** i for i in range(len(bounds))]
      self.weights = tuple(
          None if self.tie_weight else
          self.param(f"weight_{i}", weight_init, (end - start, width), self.param_dtype)
          for i, ((start, end), width) in enumerate(zip(bounds, widths)))
      self.biases = tuple(self.param(f"bias_{i}", zeros, (end - start,), self.param_dtype)
                          for i, (start, end) in enumerate(bounds))
      self.projs = tuple(None if self.tie_projs[i] else
                         self.param(f"proj_{i}", proj_init, (self.d_proj, width),
                                    self.param_dtype)
                         for i, width in enumerate(widths))

  def _cluster(self, i: int, tables: Sequence[Array], emb_projs: Sequence[Array | None]
               ) -> tuple[Array, Array, Array | None]:
    """Word vectors, biases and projection of cluster i (the head's without cluster logits)."""
    if self.div_val == 1:
      start, end = cluster_bounds(self.vocab_size, self.cutoffs)[i]
      weight = (tables[0] if self.tie_weight else self.weights[0])[start:end]
      bias = self.biases[0][start:end]
      if self.d_proj == self.d_embed:
        proj = None
      else:
        proj = emb_projs[0] if self.tie_projs[i] else self.projs[i]
    else:
      weight = tables[i] if self.tie_weight else self.weights[i]
      bias = self.biases[i]
      proj = emb_projs[i] if self.tie_projs[i] else self.projs[i]
    return weight, bias, proj

  def _head_log_probs(self, hidden: Array, tables: Sequence[Array],
                      emb_projs: Sequence[Array | None]) -> Array:
    """Log-probabilities of the shortlist tokens, then of each tail cluster."""
    weight, bias, proj = self._cluster(0, tables, emb_projs)
    if self.cutoffs:
      weight = jnp.concatenate([weight, self.cluster_weight.astype(weight.dtype)])
      bias = jnp.concatenate([bias, self.cluster_bias.astype(bias.dtype)])
    return jax.nn.log_softmax(_logits(hidden, weight, bias, proj, self.dtype), axis=-1)

  def _cluster_column(self, i: int) -> int:
    """Where tail cluster i's logit sits in the head (the original's `[:, -i]`)."""
    return self.cutoffs[0] + len(self.cutoffs) - i

  def log_probs(self, hidden: Array, tables: Sequence[Array],
                emb_projs: Sequence[Array | None]) -> Array:
    """Log-probabilities of the whole vocabulary, [..., d_proj] -> [..., vocab_size]."""
    head = self._head_log_probs(hidden, tables, emb_projs)
    if not self.cutoffs:
      return head
    parts = [head[..., :self.cutoffs[0]]]
    for i in range(1, len(self.cutoffs) + 1):
      tail = jax.nn.log_softmax(_logits(hidden, *self._cluster(i, tables, emb_projs),
                                        self.dtype), axis=-1)
      parts.append(head[..., self._cluster_column(i), None] + tail)
    return jnp.concatenate(parts, axis=-1)

  def target_log_probs(self, hidden: Array, targets: Array, tables: Sequence[Array],
                       emb_projs: Sequence[Array | None]) -> Array:
    """log p(target) of each position, exactly: hidden [..., d_proj], targets [...] -> [...].

    Every position gets the head; a tail cluster's softmax is computed only for the
    positions whose target falls in it, `chunk_size` at a time, so the cost follows the
    tokens present, as the original's gather does, with shapes fixed at trace time.
    """
    shape = targets.shape
    hidden = jnp.asarray(hidden).reshape(-1, hidden.shape[-1])
    targets = jnp.asarray(targets).reshape(-1)
    head = self._head_log_probs(hidden, tables, emb_projs)
    shortlist = self.cutoffs[0] if self.cutoffs else self.vocab_size
    in_head = targets < shortlist
    out = jnp.where(in_head, jnp.take_along_axis(
        head, jnp.clip(targets, 0, shortlist - 1)[:, None], axis=-1)[:, 0], 0)
    bounds = cluster_bounds(self.vocab_size, self.cutoffs)
    for i in range(1, len(bounds)):
      start, end = bounds[i]
      inside = (targets >= start) & (targets < end)
      tail = self._tail_target_log_probs(hidden, targets, inside, start, end,
                                         *self._cluster(i, tables, emb_projs))
      out = out + jnp.where(inside, head[:, self._cluster_column(i)] + tail, 0)
    return out.reshape(shape)

  def _tail_target_log_probs(self, hidden: Array, targets: Array, inside: Array, start: int,
                             end: int, weight: Array, bias: Array,
                             proj: Array | None) -> Array:
    """log p(target | cluster) where `inside`, 0 elsewhere: [N, d], [N] -> [N]."""
    num = targets.shape[0]
    chunk = min(self.chunk_size, num)
    rounds = -(-num // chunk)
    count = jnp.sum(inside)
    # The positions in the cluster first, in order; the padding (position 0) is masked.
    order = jnp.nonzero(inside, size=rounds * chunk, fill_value=0)[0].reshape(rounds, chunk)

    def score(index: Array) -> Array:
      logits = _logits(hidden[index], weight, bias, proj, self.dtype)
      picked = jnp.take_along_axis(
          logits, jnp.clip(targets[index] - start, 0, end - start - 1)[:, None], axis=-1)
      return picked[:, 0] - jax.nn.logsumexp(logits, axis=-1)

    # Recomputed in the backward pass, so no round's [chunk, cluster size] softmax is kept.
    @jax.checkpoint
    def one_round(args: tuple[Array, Array]) -> Array:
      r, index = args
      skip = lambda index: jnp.zeros(index.shape, jnp.promote_types(self.dtype, jnp.float32))
      return jax.lax.cond(r * chunk < count, score, skip, index)

    scores = jax.lax.map(one_round, (jnp.arange(rounds), order))
    scores = jnp.where(jnp.arange(rounds * chunk).reshape(rounds, chunk) < count, scores, 0)
    return jnp.zeros(num, scores.dtype).at[order.reshape(-1)].add(scores.reshape(-1))


class RelPartialLearnableMultiHeadAttn(nn.Module):
  """Relative multi-head attention over (memory ++ segment), with its residual and LayerNorm."""
  n_head: int
  d_head: int
  d_model: int
  dropout: float = 0.0
  dropatt: float = 0.0
  pre_lnorm: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mem: Array, r: Array, mask: Array, r_w_bias: Array | None,
               r_r_bias: Array | None, train: bool = False) -> Array:
    """x [B, T, D], mem [B, M, D], r [M + T, D] (distances M + T - 1 down to 0), mask
    [B, 1, T, M + T] (True: may attend); the biases [H, Dh] are this layer's own when None."""
    init = nn.initializers.normal(self.init_std)
    dense = lambda features, name: nn.Dense(features, use_bias=False, kernel_init=init,
                                            dtype=self.dtype, param_dtype=self.param_dtype,
                                            name=name)
    layer_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                              scale_init=_layernorm_scale_init(self.init_std),
                              name="layer_norm")
    if r_w_bias is None:
      r_w_bias = self.param("r_w_bias", init, (self.n_head, self.d_head), self.param_dtype)
      r_r_bias = self.param("r_r_bias", init, (self.n_head, self.d_head), self.param_dtype)
    batch, t = x.shape[:2]
    heads = (self.n_head, self.d_head)
    cat = jnp.concatenate([mem, x], axis=1)
    if self.pre_lnorm:
      cat = layer_norm(cat)
    q, k, v = jnp.split(dense(3 * self.n_head * self.d_head, "qkv_net")(cat), 3, axis=-1)
    q = q[:, -t:].reshape(batch, t, *heads)
    k = k.reshape(batch, -1, *heads)
    v = v.reshape(batch, -1, *heads)
    r_k = dense(self.n_head * self.d_head, "r_net")(r).reshape(-1, *heads)
    acc = jnp.promote_types(self.dtype, jnp.float32)
    content = jnp.einsum("bihd,bjhd->bhij", q + jnp.asarray(r_w_bias, self.dtype), k,
                         preferred_element_type=acc)
    position = rel_shift(jnp.einsum("bihd,jhd->bhij", q + jnp.asarray(r_r_bias, self.dtype),
                                    r_k, preferred_element_type=acc))
    scores = (content + position) / math.sqrt(self.d_head)
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    self.sow("intermediates", "scores", scores)
    probs = jnp.asarray(jax.nn.softmax(scores, axis=-1), self.dtype)
    probs = nn.Dropout(self.dropatt)(probs, deterministic=not train)
    out = jnp.einsum("bhij,bjhd->bihd", probs, v).reshape(batch, t, -1)
    out = nn.Dropout(self.dropout)(dense(self.d_model, "o_net")(out), deterministic=not train)
    return x + out if self.pre_lnorm else layer_norm(x + out)


# Feed-forward activations by name: the original's ReLU, or GELU, differentiable everywhere.
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}


class PositionwiseFF(nn.Module):
  """Feed-forward network (ReLU or GELU) with its residual and LayerNorm."""
  d_model: int
  d_inner: int
  dropout: float = 0.0
  pre_lnorm: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    init = nn.initializers.normal(self.init_std)
    dense = lambda features, name: nn.Dense(features, kernel_init=init, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    layer_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                              scale_init=_layernorm_scale_init(self.init_std),
                              name="layer_norm")
    out = layer_norm(x) if self.pre_lnorm else x
    activation = ACTIVATIONS[self.activation]
    out = nn.Dropout(self.dropout)(activation(dense(self.d_inner, "core_0")(out)),
                                   deterministic=not train)
    out = nn.Dropout(self.dropout)(dense(self.d_model, "core_1")(out), deterministic=not train)
    return x + out if self.pre_lnorm else layer_norm(x + out)


class DecoderLayer(nn.Module):
  """Relative attention, then the feed-forward network."""
  n_head: int
  d_head: int
  d_model: int
  d_inner: int
  dropout: float = 0.0
  dropatt: float = 0.0
  pre_lnorm: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: Array, mem: Array, r: Array, mask: Array, r_w_bias: Array | None,
               r_r_bias: Array | None, train: bool = False) -> Array:
    x = RelPartialLearnableMultiHeadAttn(
        self.n_head, self.d_head, self.d_model, self.dropout, self.dropatt, self.pre_lnorm,
        self.init_std, self.dtype, self.param_dtype, name="dec_attn")(
            x, mem, r, mask, r_w_bias, r_r_bias, train)
    return PositionwiseFF(self.d_model, self.d_inner, self.dropout, self.pre_lnorm,
                          self.init_std, self.dtype, self.param_dtype, self.activation,
                          name="pos_ff")(x, train)


class TransformerXL(nn.Module):
  """The Transformer-XL language model (see the module docstring).

  `__call__(tokens, mems, train)` gives the last hidden states and the new memory;
  `loss(tokens, targets, mems, train)` the mean negative log-likelihood of the targets and
  the new memory; `log_probs(hidden)` / `target_log_probs(hidden, targets)` the output
  distribution. Initialising through any of them creates every parameter. The parameters
  do not depend on `mem_len`, `tgt_len`, `clamp_len`, `same_length` or the dropout rates,
  so `model.clone(mem_len=..., ...)` evaluates trained parameters with other settings.
  """
  vocab_size: int
  n_layer: int = 16
  d_model: int = 410
  n_head: int = 10
  d_head: int = 41
  d_inner: int = 2100
  d_embed: int | None = None  # input/output word-vector width; None: d_model
  mem_len: int = 150
  tgt_len: int = 150  # training segment length, for `init_variables`; any T works
  cutoffs: Sequence[int] = ()  # empty: plain embedding and softmax
  div_val: int = 1
  tie_weight: bool = True
  tie_projs: Sequence[bool] | None = None  # per cluster; None: only the tails' (run_wt103_*)
  dropout: float = 0.1
  dropatt: float = 0.0
  pre_lnorm: bool = False
  clamp_len: int = -1  # > 0: distances beyond it share its embedding
  same_length: bool = False
  untie_r: bool = False  # a u and v per layer instead of shared
  softmax_chunk: int = 1024
  activation: str = "relu"  # the feed-forward's: 'relu' (the original's) or 'gelu'
  init_std: float = 0.02
  proj_init_std: float = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _tie_projs(self) -> tuple[bool, ...]:
    if self.tie_projs is None:
      return (False,) + (True,) * len(self.cutoffs)
    return tuple(self.tie_projs)

  def setup(self) -> None:
    self._check()
    d_embed = self.d_embed or self.d_model
    common = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
    self.word_emb = AdaptiveEmbedding(self.vocab_size, d_embed, self.d_model,
                                      tuple(self.cutoffs), self.div_val,
                                      proj_init_std=self.proj_init_std, **common)
    self.crit = ProjectedAdaptiveLogSoftmax(
        self.vocab_size, d_embed, self.d_model, tuple(self.cutoffs), self.div_val,
        self.tie_weight, self._tie_projs(), self.softmax_chunk,
        proj_init_std=self.proj_init_std, **common)
    if not self.untie_r:
      init = nn.initializers.normal(self.init_std)
      self.r_w_bias = self.param("r_w_bias", init, (self.n_head, self.d_head),
                                 self.param_dtype)
      self.r_r_bias = self.param("r_r_bias", init, (self.n_head, self.d_head),
                                 self.param_dtype)
    self.layers = [DecoderLayer(self.n_head, self.d_head, self.d_model, self.d_inner,
                                self.dropout, self.dropatt, self.pre_lnorm, **common,
                                activation=self.activation)
                   for _ in range(self.n_layer)]
    self.drop = nn.Dropout(self.dropout)

  def _check(self) -> None:
    if list(self.cutoffs) != sorted(set(self.cutoffs)) or any(
        not 0 < c < self.vocab_size for c in self.cutoffs):
      raise ValueError(f"cutoffs={tuple(self.cutoffs)} must increase strictly inside "
                       f"(0, vocab_size={self.vocab_size})")
    if len(self._tie_projs()) != len(self.cutoffs) + 1:
      raise ValueError(f"tie_projs={self.tie_projs} needs one entry per cluster "
                       f"({len(self.cutoffs) + 1})")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r} is unknown; choose one of "
                       f"{', '.join(ACTIVATIONS)}")
    if self.div_val < 1:
      raise ValueError(f"div_val={self.div_val} must be at least 1")
    if self.d_model % 2:
      raise ValueError(f"d_model={self.d_model} must be even (sin and cos halves of R)")
    if self.same_length and self.mem_len < 1:
      raise ValueError("same_length needs mem_len >= 1")

  def init_mems(self, batch_size: int) -> Memory:
    """Empty memory: every slot masked out (a fresh stream)."""
    return Memory(jnp.zeros((batch_size, self.n_layer, self.mem_len, self.d_model),
                            self.dtype),
                  jnp.zeros((batch_size,), jnp.int32))

  def _attention_mask(self, t: int, length: Array) -> Array:
    """[B, 1, T, M + T]: query i (position M + i) may attend to key j."""
    m = self.mem_len
    query = m + jnp.arange(t)[:, None]
    key = jnp.arange(m + t)[None, :]
    mask = key <= query
    if self.same_length:
      mask &= query - key < self.mem_len
    filled = key[None] >= m - length[:, None, None]
    return (mask[None] & filled)[:, None]

  def _relative_positions(self, k: int) -> Array:
    """R for distances k - 1 down to 0, clamped at `clamp_len`."""
    distance = jnp.arange(k - 1, -1, -1, dtype=jnp.promote_types(self.dtype, jnp.float32))
    if self.clamp_len > 0:
      distance = jnp.minimum(distance, self.clamp_len)
    return jnp.asarray(sinusoid_embedding(distance, self.d_model), self.dtype)

  def __call__(self, tokens: Array, mems: Memory | None = None, train: bool = False
               ) -> tuple[Array, Memory]:
    """tokens [B, T] -> (last hidden states [B, T, d_model], new memory)."""
    batch, t = tokens.shape
    if mems is None:
      mems = self.init_mems(batch)
    if self.is_initializing():
      self.crit.log_probs(jnp.zeros((1, self.d_model), self.dtype), self.word_emb.tables,
                          self.word_emb.projs)  # creates the softmax's parameters too
    memory = jax.lax.stop_gradient(jnp.asarray(mems.hidden, self.dtype))
    k = self.mem_len + t
    mask = self._attention_mask(t, mems.length)
    deterministic = not train
    x = self.drop(self.word_emb(tokens), deterministic=deterministic)
    r = self.drop(self._relative_positions(k), deterministic=deterministic)
    inputs = []
    for i, layer in enumerate(self.layers):
      inputs.append(x)
      biases = (None, None) if self.untie_r else (self.r_w_bias, self.r_r_bias)
      x = layer(x, memory[:, i], r, mask, *biases, train)
    x = self.drop(x, deterministic=deterministic)
    new = jnp.concatenate([memory, jnp.stack(inputs, axis=1)], axis=2)[:, :, k - self.mem_len:]
    new_length = jnp.minimum(mems.length + t, self.mem_len).astype(jnp.int32)
    return x, Memory(jax.lax.stop_gradient(new), new_length)

  def log_probs(self, hidden: Array) -> Array:
    """Log-probabilities of the whole vocabulary: [..., d_model] -> [..., vocab_size]."""
    return self.crit.log_probs(hidden, self.word_emb.tables, self.word_emb.projs)

  def target_log_probs(self, hidden: Array, targets: Array) -> Array:
    """log p(target) at each position: [..., d_model], [...] -> [...]."""
    return self.crit.target_log_probs(hidden, targets, self.word_emb.tables,
                                      self.word_emb.projs)

  def loss(self, tokens: Array, targets: Array, mems: Memory | None = None,
           train: bool = False) -> tuple[Array, Memory]:
    """Mean negative log-likelihood of targets [B, T] after tokens [B, T], and the new memory."""
    hidden, new_mems = self(tokens, mems, train)
    return -jnp.mean(self.target_log_probs(hidden, targets)), new_mems


def init_variables(model: TransformerXL, key: Array, batch_size: int = 1) -> dict[str, Any]:
  """The model's variables, from a [batch_size, tgt_len] segment of token 0."""
  tokens = jnp.zeros((batch_size, model.tgt_len), jnp.int32)
  return model.init(key, tokens, model.init_mems(batch_size))


def transformer_xl(cfg: ml_collections.ConfigDict, vocab_size: int) -> TransformerXL:
  """Transformer-XL sized by `config.model` (fields as `TransformerXL`'s; dtype by name)."""
  dtype = cfg.get("dtype", "float32")
  if dtype not in _DTYPES:
    raise ConfigError(f"config.model.dtype={dtype!r} is unknown; choose one of "
                      f"{', '.join(_DTYPES)}")
  cutoffs = tuple(cfg.get("cutoffs", ()))
  tie_projs = cfg.get("tie_projs", None)
  fields = dict(
      n_layer=cfg.get("n_layer", 16), d_model=cfg.get("d_model", 410),
      n_head=cfg.get("n_head", 10), d_head=cfg.get("d_head", 41),
      d_inner=cfg.get("d_inner", 2100), d_embed=cfg.get("d_embed", None),
      mem_len=cfg.get("mem_len", 150), tgt_len=cfg.get("tgt_len", 150), cutoffs=cutoffs,
      div_val=cfg.get("div_val", 1), tie_weight=cfg.get("tie_weight", True),
      tie_projs=None if tie_projs is None else tuple(tie_projs),
      dropout=cfg.get("dropout", 0.1), dropatt=cfg.get("dropatt", 0.0),
      pre_lnorm=cfg.get("pre_lnorm", False), clamp_len=cfg.get("clamp_len", -1),
      same_length=cfg.get("same_length", False), untie_r=cfg.get("untie_r", False),
      softmax_chunk=cfg.get("softmax_chunk", 1024), dtype=_DTYPES[dtype],
      activation=cfg.get("activation", "relu"))
  model = TransformerXL(vocab_size=vocab_size, **fields)
  try:
    model._check()
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  return model
