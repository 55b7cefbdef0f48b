"""The diagnostics on a Flax Linen model with BatchNorm and dropout, a Flax NNX model and a
plain function, each against a dense float64 Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from invmeasure import diagnostics as dg
from invmeasure.models import losses, small
from tests import reference as ref


def tiny_cnn_problem(seed, *, dropout_rate=0.3):
  model = small.SmallCNN(widths=(2,), num_classes=3, use_batchnorm=True,
                         dropout_rate=dropout_rate)
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(rng.normal(size=(6, 4, 4, 1))),
           "label": jnp.asarray(rng.integers(0, 3, size=(6,)))}
  variables = model.init(jax.random.key(seed), batch["image"])
  params = variables.pop("params")
  # Non-trivial running statistics, so 'train' and 'eval' functions differ.
  state = jax.tree.map(lambda s: s + 0.5, dict(variables))
  return model, params, state, batch


def test_linen_batchnorm_dropout_loss_is_deterministic_and_hvp_matches_dense():
  with jax.enable_x64():
    model, params, state, batch = tiny_cnn_problem(0)
    loss_fn = losses.linen_loss_fn(model, state, train=True, dropout_key=jax.random.key(5))
    assert float(loss_fn(params, batch)) == float(loss_fn(params, batch))
    other_mask = losses.linen_loss_fn(model, state, train=True, dropout_key=jax.random.key(6))
    assert float(other_mask(params, batch)) != float(loss_fn(params, batch))
    hess = ref.dense_hessian(loss_fn, params, batch)
    np.testing.assert_allclose(hess, hess.T, atol=1e-10)
    v = np.random.default_rng(1).normal(size=hess.shape[0])
    got = ref.flat(dg.hvp(loss_fn, params, batch, ref.unflatten_like(params, v)))
    np.testing.assert_allclose(got, hess @ v, rtol=1e-6, atol=1e-9)


def test_linen_train_mode_uses_batch_statistics_and_eval_mode_running_ones():
  with jax.enable_x64():
    model, params, state, batch = tiny_cnn_problem(1, dropout_rate=0.0)
    train_fn = losses.linen_loss_fn(model, state, train=True)
    eval_fn = losses.linen_loss_fn(model, state, train=False)
    variables = {"params": params, **state}
    logits_train, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    logits_eval = model.apply(variables, batch["image"], train=False)
    np.testing.assert_allclose(train_fn(params, batch),
                               losses.softmax_cross_entropy(logits_train, batch["label"]))
    np.testing.assert_allclose(eval_fn(params, batch),
                               losses.softmax_cross_entropy(logits_eval, batch["label"]))
    assert abs(float(train_fn(params, batch)) - float(eval_fn(params, batch))) > 1e-3
    eigvals = np.linalg.eigvalsh(ref.dense_hessian(eval_fn, params, batch))
    top = eigvals[np.argmax(np.abs(eigvals))]
    result = dg.sharpness(eval_fn, params, batch, key=jax.random.key(0), num_iters=3000,
                          tol=1e-12, unroll=False)
    np.testing.assert_allclose(result.eigenvalue, top, rtol=1e-4)


class NNXNet(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 5, rngs=rngs, param_dtype=jnp.float64)
    self.out = nnx.Linear(5, 3, rngs=rngs, param_dtype=jnp.float64)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def test_nnx_model_through_split_and_merge():
  with jax.enable_x64():
    graphdef, params = nnx.split(NNXNet(nnx.Rngs(0)), nnx.Param)
    def loss_fn(p, batch):
      model = nnx.merge(graphdef, p)
      return losses.softmax_cross_entropy(model(batch["x"]), batch["y"])
    rng = np.random.default_rng(2)
    batch = {"x": jnp.asarray(rng.normal(size=(10, 4))), "y": jnp.asarray(rng.integers(0, 3, 10))}
    hess = ref.dense_hessian(loss_fn, params, batch)
    v = rng.normal(size=hess.shape[0])
    got = ref.flat(dg.hvp(loss_fn, params, batch, ref.unflatten_like(params, v)))
    np.testing.assert_allclose(got, hess @ v, rtol=1e-6)
    batches = {"x": jnp.stack([batch["x"], 0.5 * batch["x"]]),
               "y": jnp.stack([batch["y"], batch["y"][::-1]])}
    stats = dg.gradient_stats(loss_fn, params, batches)
    assert np.isfinite(float(stats.noise_norm)) and float(stats.noise_norm) > 0


def test_plain_function_of_a_tuple_of_arrays():
  with jax.enable_x64():
    loss_fn = lambda p, b: jnp.sum(jnp.sin(p[0] * b) ** 2) + jnp.sum(p[1] ** 4) / 4
    params = (jnp.asarray([0.3, -1.2]), jnp.asarray([[0.5, 2.0]]))
    batch = jnp.asarray([1.0, 2.0])
    hess = ref.dense_hessian(loss_fn, params, batch)
    v = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(
        ref.flat(dg.hvp(loss_fn, params, batch, ref.unflatten_like(params, v))), hess @ v,
        rtol=1e-10)
    # Closed form of the quartic block: d^2/dx^2 x^4/4 = 3 x^2.
    np.testing.assert_allclose(np.diag(hess)[2:], 3 * np.array([0.5, 2.0]) ** 2, rtol=1e-12)
