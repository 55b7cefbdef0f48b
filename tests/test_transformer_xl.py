"""Transformer-XL: segment recurrence, causality, relative attention, stop-gradient memory,
the adaptive softmax, parameter counts of the paper's models, and the config builder.

Tests run with `jax.enable_x64`, on a two-layer model of width 8 computing in float64
(bfloat16 in its own test) whose parameters are drawn at unit scale (not the tiny initial
scale, under which attention is nearly uniform and mistakes hide), mostly on segments of
one shape, so the eager ops compile once; the big models are only traced (`jax.eval_shape`).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from invmeasure.models import transformer_xl as txl
from invmeasure.training.errors import ConfigError

VOCAB = 20
# Adaptive input and softmax with two tails of widths 4 and 2, projections to d_model 8.
TINY = dict(vocab_size=VOCAB, n_layer=2, d_model=8, n_head=2, d_head=3, d_inner=16,
            d_embed=8, cutoffs=(6, 12), div_val=2, mem_len=4, tgt_len=4, dropout=0.0)


def random_params(model, batch_size=2, seed=0):
  """Float64 numpy parameters of `model`, at a scale that keeps activations near 1."""
  shapes = jax.eval_shape(lambda: txl.init_variables(model, jax.random.key(0), batch_size))
  rng = np.random.default_rng(seed)

  def draw(x):
    scale = 1 / math.sqrt(x.shape[0]) if x.ndim == 2 else 0.5
    return rng.normal(0.0, scale, x.shape)

  return jax.tree.map(draw, shapes)


def tokens(shape, seed=1, vocab=VOCAB):
  return np.random.default_rng(seed).integers(0, vocab, shape)


def tiny(**overrides):
  return txl.TransformerXL(**{**TINY, "dtype": jnp.float64, "param_dtype": jnp.float64,
                              **overrides})


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def tiny_params():
  with jax.enable_x64(True):
    return random_params(tiny())


@pytest.mark.parametrize("mem_len, pre_lnorm", [(4, False), (7, True)])
def test_two_segments_equal_one_segment_of_twice_the_length(tiny_params, mem_len, pre_lnorm):
  """With mem_len >= T, segment 2 (on segment 1's memory) computes what one pass over all
  2T tokens computes at its positions, as does segment 1 at the first T."""
  t = 4
  seq = tokens((2, 2 * t))
  model = tiny(mem_len=mem_len, pre_lnorm=pre_lnorm)
  # Jitted: op by op, each of the model's operations compiles on its own.
  apply = jax.jit(model.apply)
  whole, _ = apply(tiny_params, seq, model.init_mems(2))
  first, mems = apply(tiny_params, seq[:, :t], model.init_mems(2))
  second, mems2 = apply(tiny_params, seq[:, t:], mems)
  np.testing.assert_allclose(first, whole[:, :t], rtol=0, atol=1e-12)
  np.testing.assert_allclose(second, whole[:, t:], rtol=0, atol=1e-10)
  log_probs = jax.jit(lambda variables, x: model.apply(variables, x, method=model.log_probs))
  lp_whole = log_probs(tiny_params, whole)
  lp_second = log_probs(tiny_params, second)
  np.testing.assert_allclose(lp_second, lp_whole[:, t:], rtol=0, atol=1e-10)
  assert mems.hidden.shape == mems2.hidden.shape == (2, 2, mem_len, 8)
  np.testing.assert_array_equal(mems.length, [t, t])
  np.testing.assert_array_equal(mems2.length, [min(2 * t, mem_len)] * 2)


def test_memory_holds_each_layers_latest_inputs(tiny_params):
  """New memory: the last mem_len inputs of each layer over (memory ++ segment)."""
  t, mem_len = 4, 7
  seq = tokens((2, 2 * t))
  model = tiny(mem_len=mem_len)
  _, state = model.apply(tiny_params, seq, capture_intermediates=True,
                         mutable=["intermediates"])
  captured = state["intermediates"]
  inputs = [captured["word_emb"]["__call__"][0], captured["layers_0"]["__call__"][0]]
  _, mems = model.apply(tiny_params, seq[:, :t], model.init_mems(2))
  _, mems = model.apply(tiny_params, seq[:, t:], mems)
  for layer in range(2):
    np.testing.assert_allclose(mems.hidden[:, layer], inputs[layer][:, -mem_len:],
                               rtol=0, atol=1e-10)


def test_a_future_token_changes_no_earlier_output(tiny_params):
  seq = tokens((2, 4))
  model = tiny()
  _, mems = model.apply(tiny_params, tokens((2, 4), seed=5))
  for pos in (0, 2, 3):
    changed = seq.copy()
    changed[:, pos] = (changed[:, pos] + 1) % VOCAB
    out, _ = model.apply(tiny_params, seq, mems)
    out_changed, _ = model.apply(tiny_params, changed, mems)
    np.testing.assert_array_equal(out[:, :pos], out_changed[:, :pos])
    assert np.abs(out[:, pos:] - out_changed[:, pos:]).max() > 1e-3


def test_rel_shift_aligns_scores_by_distance():
  """Entry [i, j] of the shifted scores is the raw score at distance M + i - j."""
  t, m = 3, 4
  k = m + t
  raw = np.random.default_rng(0).normal(size=(2, 5, t, k))
  shifted = np.asarray(txl.rel_shift(raw))
  for i in range(t):
    for j in range(m + i + 1):
      distance = m + i - j
      np.testing.assert_array_equal(shifted[..., i, j], raw[..., i, k - 1 - distance])


def attention_setup(m, t, seed=0):
  """A relative attention layer (post-norm, no dropout), its float64 inputs and params."""
  d, h, dh = 8, 2, 3
  layer = txl.RelPartialLearnableMultiHeadAttn(h, dh, d, dtype=jnp.float64,
                                              param_dtype=jnp.float64)
  rng = np.random.default_rng(seed)
  x, mem = rng.normal(size=(2, t, d)), rng.normal(size=(2, m, d))
  u, v = rng.normal(size=(h, dh)), rng.normal(size=(h, dh))
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x, mem, np.zeros((m + t, d)),
                          np.ones((2, 1, t, m + t), bool), u, v)
  params = jax.tree.map(lambda s: rng.normal(0, 0.6, s.shape), shapes)
  return layer, params, x, mem, u, v


def attention_scores(layer, params, x, mem, u, v):
  """The layer's masked, scaled scores [B, H, T, M + T] for causal attention."""
  t, k = x.shape[1], mem.shape[1] + x.shape[1]
  r = txl.sinusoid_embedding(jnp.arange(k - 1, -1, -1, dtype=jnp.float64), x.shape[-1])
  mask = np.tril(np.ones((t, k), bool), k - t)[None, None]
  _, state = layer.apply(params, x, mem, r, mask, u, v, mutable=["intermediates"])
  return np.asarray(state["intermediates"]["scores"][0])


def test_attention_scores_match_direct_relative_computation():
  """Scores = ((q_i + u) . k_j + (q_i + v) . W_r R(distance i - j)) / sqrt(d_head), with
  the position term computed for each pair from its distance, not by the shift."""
  m, t = 4, 3
  layer, params, x, mem, u, v = attention_setup(m, t)
  scores = attention_scores(layer, params, x, mem, u, v)
  kernel = params["params"]["qkv_net"]["kernel"]
  w_r = params["params"]["r_net"]["kernel"]
  heads = np.concatenate([mem, x], axis=1) @ kernel
  hd = 2 * 3
  q = heads[:, -t:, :hd].reshape(2, t, 2, 3)
  keys = heads[..., hd:2 * hd].reshape(2, m + t, 2, 3)
  expected = np.full(scores.shape, np.nan)
  for i in range(t):
    for j in range(m + i + 1):
      r = np.asarray(txl.sinusoid_embedding(jnp.array([m + i - j], jnp.float64), 8))
      r_k = (r @ w_r).reshape(2, 3)
      content = np.einsum("bhd,bhd->bh", q[:, i] + u, keys[:, j])
      position = np.einsum("bhd,hd->bh", q[:, i] + v, r_k)
      expected[:, :, i, j] = (content + position) / math.sqrt(3)
  visible = ~np.isnan(expected)
  np.testing.assert_allclose(scores[visible], expected[visible], rtol=0, atol=1e-12)
  assert (scores[~visible] < -1e300).all()


def test_attention_scores_depend_on_positions_only_through_distance():
  """Prepending more memory shifts every key by the same amount: the scores of the old
  keys do not change."""
  m, t, extra = 3, 3, 2
  layer, params, x, mem, u, v = attention_setup(m, t)
  longer = np.concatenate([np.random.default_rng(7).normal(size=(2, extra, 8)), mem], 1)
  scores = attention_scores(layer, params, x, mem, u, v)
  shifted = attention_scores(layer, params, x, longer, u, v)
  np.testing.assert_allclose(shifted[..., extra:], scores, rtol=0, atol=1e-12)


def test_clamp_len_and_same_length(tiny_params):
  seq = tokens((2, 4))
  model = tiny()
  _, mems = model.apply(tiny_params, tokens((2, 4), seed=3))
  out, _ = model.apply(tiny_params, seq, mems)
  # Distances reach mem_len + t - 1 = 7: clamping there changes nothing, below it does.
  out_clamped, _ = model.clone(clamp_len=7).apply(tiny_params, seq, mems)
  np.testing.assert_allclose(out_clamped, out, rtol=0, atol=1e-5)
  out_clamped, _ = model.clone(clamp_len=2).apply(tiny_params, seq, mems)
  assert np.abs(out_clamped - out).max() > 1e-3
  # same_length: query i sees keys i + 1 .. mem_len + i, so no query sees memory slot 0
  # and only query 0 sees slot 1 (in the second layer's memory, only query 0's output).
  same = model.clone(same_length=True)
  out_same, _ = same.apply(tiny_params, seq, mems)
  assert np.abs(out_same - out).max() > 1e-3
  hidden = np.asarray(mems.hidden).copy()
  hidden[:, :, 0] += 1.0
  out_poked, _ = same.apply(tiny_params, seq, txl.Memory(hidden, mems.length))
  np.testing.assert_allclose(out_poked, out_same, rtol=0, atol=1e-5)
  hidden[:, 1, 1] += 1.0
  out_poked, _ = same.apply(tiny_params, seq, txl.Memory(hidden, mems.length))
  np.testing.assert_allclose(out_poked[:, 1:], out_same[:, 1:], rtol=0, atol=1e-5)
  assert np.abs(out_poked[:, 0] - out_same[:, 0]).max() > 1e-3


def test_no_gradient_flows_through_memory():
  """d/dp L2(p, mems(p)) = dL2/dp at fixed mems: the path through segment 1 contributes 0.

  Segment 1 runs with its own copy p1 of the parameters and segment 2 with p2; at
  p1 = p2 = p the gradient through both segments is the sum of the two, so that the p1
  part is exactly zero is the claim. Segment 1's new memory also carries no gradient.
  """
  model = tiny(cutoffs=(), div_val=1)
  params = random_params(model)
  seq, targets = tokens((2, 8)), tokens((2, 8), seed=2)

  def two_segments(p1, p2):
    _, mems = model.apply(p1, seq[:, :4], model.init_mems(2))
    return model.apply(p2, seq[:, 4:], targets[:, 4:], mems, method=model.loss)[0]

  def memory_sum(p):
    return jnp.sum(model.apply(p, seq[:, :4], model.init_mems(2))[1].hidden)

  grad_through_first, grad_second = jax.jit(jax.grad(two_segments, argnums=(0, 1)))(
      params, params)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grad_through_first))
  assert max(np.abs(g).max() for g in jax.tree.leaves(grad_second)) > 1e-3
  assert all(np.all(g == 0) for g in jax.tree.leaves(jax.jit(jax.grad(memory_sum))(params)))


@pytest.mark.parametrize("div_val, d_embed, tie_weight, tie_projs", [
    (1, 8, True, None),
    (1, 6, True, (False, True, True)),
    (1, 6, False, (False, False, False)),
    (2, 8, True, None),
    (2, 8, False, (True, False, True)),
])
def test_adaptive_softmax_is_a_distribution(div_val, d_embed, tie_weight, tie_projs):
  model = tiny(div_val=div_val, d_embed=d_embed, tie_weight=tie_weight, tie_projs=tie_projs)
  hidden = np.random.default_rng(3).normal(size=(2, 4, 8))
  log_probs = model.apply(random_params(model), hidden, method=model.log_probs)
  assert log_probs.shape == (2, 4, VOCAB)
  np.testing.assert_allclose(jax.nn.logsumexp(log_probs, axis=-1), 0, atol=1e-12)


def test_target_log_probs_and_their_gradients_match_the_full_distribution(tiny_params):
  """The tail clusters scored a few tokens at a time (here 3, so several rounds, some
  skipped) give the full distribution's values and gradients."""
  hidden = np.random.default_rng(4).normal(size=(3, 5, 8))
  targets = tokens((3, 5), seed=6)
  targets[0, :3] = [13, 15, 19]  # the last tail cluster [12, 20) gets at least 3
  model = tiny(softmax_chunk=3)

  def picked(p, h):
    return model.apply(p, h, targets, method=model.target_log_probs)

  def from_full(p, h):
    full = model.apply(p, h, method=model.log_probs)
    return jnp.take_along_axis(full, targets[..., None], axis=-1)[..., 0]

  weights = np.random.default_rng(5).normal(size=targets.shape)
  grads = jax.jit(lambda f, p, h: jax.grad(lambda p, h: jnp.sum(weights * f(p, h)),
                                           argnums=(0, 1))(p, h), static_argnums=0)
  np.testing.assert_allclose(picked(tiny_params, hidden), from_full(tiny_params, hidden),
                             rtol=0, atol=1e-12)
  for got, want in zip(jax.tree.leaves(grads(picked, tiny_params, hidden)),
                       jax.tree.leaves(grads(from_full, tiny_params, hidden))):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tie_weight", [True, False])
def test_without_cutoffs_the_softmax_is_plain(tie_weight):
  model = tiny(cutoffs=(), div_val=1, tie_weight=tie_weight)
  hidden = np.random.default_rng(3).normal(size=(2, 4, 8))
  params = random_params(model)
  crit = params["params"]["crit"]
  assert ("weight_0" in crit) != tie_weight
  weight = params["params"]["word_emb"]["emb_0"] if tie_weight else crit["weight_0"]
  expected = jax.nn.log_softmax(hidden @ weight.T + crit["bias_0"], axis=-1)
  log_probs = model.apply(params, hidden, method=model.log_probs)
  np.testing.assert_allclose(log_probs, expected, rtol=0, atol=1e-12)
  targets = tokens((2, 4))
  loss, _ = model.apply(params, tokens((2, 4), seed=9), targets, method=model.loss)
  hidden, _ = model.apply(params, tokens((2, 4), seed=9))
  full = model.apply(params, hidden, method=model.log_probs)
  np.testing.assert_allclose(
      loss, -np.mean(np.take_along_axis(full, targets[..., None], -1)), rtol=1e-12)


def num_params(model) -> int:
  shapes = jax.eval_shape(lambda: txl.init_variables(model, jax.random.key(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


WT103 = dict(vocab_size=267_735, cutoffs=(20_000, 40_000, 200_000), tie_weight=True,
             tgt_len=8)


def test_parameter_count_of_the_wt103_base_model():
  """151,107,538: the paper's 151M (Table 1) and the original code's count.

  run_wt103_base.sh: 16 layers, d_model 410, 10 heads of 41, d_inner 2100, div_val 1,
  tied word vectors. With div_val 1 and d_embed = d_model there are no projections, so
  tie_projs ([False, True, True, True]) ties nothing. Embedding 267,735 x 410 =
  109,771,350 (shared with the softmax), softmax biases 267,735, cluster vectors and
  biases 3 x 411, u and v 2 x 410, and per layer 2,566,650 (q/k/v 504,300, R and output
  projections 2 x 168,100, feed-forward 1,724,510, two LayerNorms 1,640).
  """
  model = txl.TransformerXL(**WT103, n_layer=16, d_model=410, n_head=10, d_head=41,
                            d_inner=2100, div_val=1)
  assert num_params(model) == 151_107_538


def test_parameter_count_of_the_wt103_large_model():
  """285,170,506, where the paper reports 257M: our count follows the original code's
  modules (run_wt103_large.sh: 18 layers, d_model 1024, 16 heads of 64, d_inner 4096,
  div_val 4, tie_projs [False, True, True, True]); the paper does not say what its
  figure leaves out.

  Embedding tables 20,000 x 1024 + 20,000 x 256 + 160,000 x 64 + 67,735 x 16 = 36,923,760
  and their projections 1024 x (1024 + 256 + 64 + 16) = 1,392,640 (word vectors and tail
  projections shared with the softmax); softmax biases 267,735, cluster vectors and biases
  3 x 1025, its own head projection 1024 x 1024; u and v 2 x 1024; per layer 13,640,704.
  """
  model = txl.TransformerXL(**WT103, n_layer=18, d_model=1024, n_head=16, d_head=64,
                            d_inner=4096, div_val=4)
  assert num_params(model) == 285_170_506


def test_untied_relative_biases_are_per_layer():
  model = tiny(untie_r=True)
  params = random_params(model)["params"]
  assert "r_w_bias" not in params
  assert params["layers_1"]["dec_attn"]["r_r_bias"].shape == (2, 3)


def test_dropout_only_in_training(tiny_params):
  model = tiny(dropout=0.3, dropatt=0.3)
  seq = tokens((2, 4))
  out, _ = model.apply(tiny_params, seq)
  np.testing.assert_array_equal(out, model.clone(dropout=0.0, dropatt=0.0).apply(
      tiny_params, seq)[0])
  train = jax.jit(lambda key: model.apply(tiny_params, seq, train=True,
                                          rngs={"dropout": key})[0])
  outs = [train(jax.random.key(i)) for i in (0, 0, 1)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.abs(outs[0] - outs[2]).max() > 1e-3
  assert np.abs(outs[0] - out).max() > 1e-3


def test_bfloat16_compute(tiny_params):
  """Network and memory in bfloat16, parameters and the loss in float32."""
  model = tiny(dtype=jnp.bfloat16, param_dtype=jnp.float32)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), tiny_params)

  @jax.jit
  def run(seq, targets):
    out, mems = model.apply(params, seq, model.init_mems(2))
    loss, _ = model.apply(params, seq, targets, mems, method=model.loss)
    return out, mems, loss

  out, mems, loss = run(tokens((2, 4)), tokens((2, 4), seed=2))
  assert out.dtype == mems.hidden.dtype == jnp.bfloat16
  assert loss.dtype == jnp.float32 and np.isfinite(loss)


def test_builder_reads_the_model_config():
  cfg = ml_collections.ConfigDict(dict(
      name="transformer_xl", n_layer=3, d_model=12, n_head=2, d_head=6, d_inner=20,
      mem_len=5, tgt_len=6, cutoffs=[10, 20], div_val=2, dropout=0.2, dropatt=0.1,
      tie_weight=True, clamp_len=9, pre_lnorm=True, dtype="bfloat16"))
  model = txl.transformer_xl(cfg, vocab_size=30)
  assert (model.n_layer, model.mem_len, model.tgt_len, model.cutoffs, model.clamp_len,
          model.pre_lnorm, model.dtype) == (3, 5, 6, (10, 20), 9, True, jnp.bfloat16)
  assert model.tie_projs is None and model.d_embed is None
  with pytest.raises(ConfigError, match="dtype"):
    txl.transformer_xl(ml_collections.ConfigDict(dict(dtype="float16")), vocab_size=30)
  with pytest.raises(ConfigError, match="cutoffs"):
    txl.transformer_xl(ml_collections.ConfigDict(dict(cutoffs=[20, 10])), vocab_size=30)
  with pytest.raises(ConfigError, match="tie_projs"):
    txl.transformer_xl(ml_collections.ConfigDict(dict(cutoffs=[10], tie_projs=[True])),
                       vocab_size=30)
