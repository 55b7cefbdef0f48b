"""How XLA:CPU runs backward convolutions inside loops and conditionals.

Prints a table: K minibatch gradients of a small CNN computed as K separate jitted calls,
Python-unrolled in one jit, in `lax.scan` and in `lax.scan(unroll=2)`; then one
convolution's weight gradient (and, for contrast, its forward pass) plain and inside
`lax.cond`. This is the measurement behind `invmeasure.diagnostics._loops`, which on CPU
drives unrolled chunks from Python rather than run `lax` loops.

    python -m benchmarks.loop_lowering           # full sizes, a few minutes on 2 cores
    python -m benchmarks.loop_lowering --quick   # tiny sizes, one repetition (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

HEADER = "| variant | median ms | vs (a) |"


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Problem and measurement sizes; `quick` is the CI smoke setting."""
  batch: int = 64
  image: int = 32
  widths: tuple[int, ...] = (32, 64, 64)
  num_grads: int = 8
  repeats: int = 5  # the loop variants take seconds each


QUICK = Sizes(batch=4, image=8, widths=(4, 8, 8), num_grads=2, repeats=1)


class CNN(nn.Module):
  """Three 3x3 convolutions with ReLU and 2x2 average pooling, then a dense head."""
  widths: Sequence[int]
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.widths:
      x = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2))
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def make_problem(sizes: Sizes):
  """Parameters, a loss function and K stacked minibatches of random images."""
  model = CNN(sizes.widths)
  rng = np.random.default_rng(0)
  shape = (sizes.num_grads, sizes.batch, sizes.image, sizes.image, 3)
  batches = {"image": jnp.asarray(rng.normal(size=shape), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, size=shape[:2]))}
  params = model.init(jax.random.key(0), batches["image"][0])["params"]

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["image"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

  return params, loss_fn, batches


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (results blocked on), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def gradient_variants(params, loss_fn, batches) -> dict[str, Callable[[], object]]:
  """The same K gradients (summed) computed four ways."""
  num = batches["label"].shape[0]
  grad = jax.grad(loss_fn)
  tree_add = lambda a, b: jax.tree.map(jnp.add, a, b)
  zeros = jax.tree.map(jnp.zeros_like, params)
  split = [jax.tree.map(lambda x, k=k: x[k], batches) for k in range(num)]
  one = jax.jit(grad)

  @jax.jit
  def unrolled(p, bs):
    total = zeros
    for k in range(num):
      total = tree_add(total, grad(p, jax.tree.map(lambda x, k=k: x[k], bs)))
    return total

  def scanned(unroll: int):
    body = lambda total, b: (tree_add(total, grad(params, b)), None)
    return jax.jit(lambda bs: jax.lax.scan(body, zeros, bs, unroll=unroll)[0])

  scan1, scan2 = scanned(1), scanned(2)
  return {
      f"(a) {num} separate jitted grad calls": lambda: [one(params, b) for b in split],
      f"(b) {num} grads Python-unrolled in one jit": lambda: unrolled(params, batches),
      f"(c) {num} grads in lax.scan": lambda: scan1(batches),
      f"(d) {num} grads in lax.scan(unroll=2)": lambda: scan2(batches),
  }


def conv_variants(sizes: Sizes) -> dict[str, Callable[[], object]]:
  """The second convolution of the CNN alone: weight gradient and forward, plain vs cond."""
  rng = np.random.default_rng(1)
  cin, cout, side = sizes.widths[0], sizes.widths[1], sizes.image // 2
  x = jnp.asarray(rng.normal(size=(sizes.batch, side, side, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(sizes.batch, side, side, cout)), jnp.float32)
  dims = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=dims)
  wgrad = lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]
  in_cond = lambda f, zero: jax.jit(
      lambda pred, *args: jax.lax.cond(pred, f, lambda *a: zero, *args))
  plain_w, cond_w = jax.jit(wgrad), in_cond(wgrad, jnp.zeros_like(w))
  plain_f, cond_f = jax.jit(conv), in_cond(conv, jnp.zeros_like(dy))
  pred = jnp.asarray(True)
  return {
      "conv weight-gradient, plain jit": lambda: plain_w(x, w, dy),
      "conv weight-gradient, inside lax.cond": lambda: cond_w(pred, x, w, dy),
      "conv forward, plain jit": lambda: plain_f(x, w),
      "conv forward, inside lax.cond": lambda: cond_f(pred, x, w),
  }


def table(rows: list[tuple[str, float, float]]) -> str:
  lines = [HEADER, "|---|---:|---:|"]
  lines += [f"| {name} | {ms:.1f} | {ratio:.2f}x |" for name, ms, ratio in rows]
  return "\n".join(lines)


def measure(group: dict[str, Callable[[], object]], repeats: int):
  """Rows (name, median ms, ratio to the group's first entry)."""
  times = {name: median_ms(fn, repeats) for name, fn in group.items()}
  base = next(iter(times.values()))
  return [(name, ms, ms / base) for name, ms in times.items()]


def describe(sizes: Sizes) -> str:
  return (f"jax {jax.__version__} on {jax.default_backend()} ({platform.machine()}, "
          f"{os.cpu_count()} cores); CNN widths {sizes.widths}, batch {sizes.batch} of "
          f"{sizes.image}x{sizes.image}x3, K={sizes.num_grads}; median of {sizes.repeats} "
          "runs after a warm-up; (a)-(d) vs (a), conv rows vs their plain row; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
  parser.add_argument("--k", type=int, default=None, help="number of gradients K")
  parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
  args = parser.parse_args(argv)
  sizes = QUICK if args.quick else Sizes()
  sizes = dataclasses.replace(sizes, num_grads=args.k or sizes.num_grads,
                              repeats=args.repeats or sizes.repeats)
  print(describe(sizes))
  params, loss_fn, batches = make_problem(sizes)
  convs = conv_variants(sizes)
  rows = measure(gradient_variants(params, loss_fn, batches), sizes.repeats)
  rows += measure(dict(list(convs.items())[:2]), sizes.repeats)
  rows += measure(dict(list(convs.items())[2:]), sizes.repeats)
  print(table(rows))
  print(f"(load at the end: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  main()
