"""The measurements behind the choices in `invmeasure.diagnostics._loops` and its callers.

On the 1,446-parameter CNN of `benchmarks/peers.py` (512 digits as one batch):
- the chunk size: ms per Hessian-vector product in a Hutchinson chunk (independent
  products) and a power-iteration chunk (dependent ones) of 1, 2, 4 and 8 unrolled
  steps, with each chunk's compile time;
- `jax.linearize` of the gradient (PyHessian's reuse of one graph) against a jitted HVP;
- a jitted call with and without donating its argument (why small carries are not
  donated);
- the compile time of a Rademacher probe drawn in each leaf's shape against drawn flat
  and reshaped (the same numbers);
- the Lanczos reorthogonalisation against a 128-row basis, multiply-and-reduce against
  matrix-vector products (that model, and the 66,570-parameter CNN of loop_lowering).

    python -m benchmarks.loop_choices            # about two minutes on 2 cores
    python -m benchmarks.loop_choices --quick    # tiny sizes, one repetition (CI)
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import loop_lowering
from benchmarks import peers
from invmeasure import diagnostics as dg
from invmeasure.diagnostics import spectrum

HEADER = ["choice", "variant", "ms", "compile s", "notes"]


def compile_seconds(fn: Callable, *args) -> float:
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def chunk_rows(pb: peers.Problem, sizes: Sequence[int], units: int, repeats: int):
  """ms per HVP over `units` HVPs driven in chunks of each size, and each chunk's compile."""
  key, start = jax.random.key(0), dg.tree_random_like(jax.random.key(1), pb.params)

  def trace_chunk(size):
    def chunk(params, batch, i0):
      total = 0.0
      for j in range(size):
        z = dg.tree_random_like(jax.random.fold_in(key, i0 + j), params, "rademacher")
        total = total + dg.tree_vdot(z, dg.hvp(pb.loss_fn, params, batch, z))
      return total
    return chunk

  def power_chunk(size):
    def chunk(params, batch, v):
      for _ in range(size):
        hv = dg.hvp(pb.loss_fn, params, batch, v)
        v = jax.tree.map(lambda x, n=dg.tree_norm(hv): x / n, hv)
      return v
    return chunk

  fns, compiles = {}, {}
  for size in sizes:
    t_fn, p_fn = trace_chunk(size), power_chunk(size)
    compiles[f"trace {size}"] = compile_seconds(t_fn, pb.params, pb.batch, 0)
    compiles[f"power {size}"] = compile_seconds(p_fn, pb.params, pb.batch, start)
    t_jit, p_jit = jax.jit(t_fn), jax.jit(p_fn)

    def run_trace(t_jit=t_jit, size=size):
      return [t_jit(pb.params, pb.batch, i) for i in range(0, units, size)]

    def run_power(p_jit=p_jit, size=size):
      v = start
      for _ in range(0, units, size):
        v = p_jit(pb.params, pb.batch, v)
      return v

    fns[f"trace {size}"], fns[f"power {size}"] = run_trace, run_power
  times = common.interleaved_ms(fns, repeats, per_call={name: units for name in fns})
  for name, ms in times.items():
    kind, size = name.split()
    loop = "Hutchinson (independent HVPs)" if kind == "trace" else "power iteration"
    yield [f"chunk size, {loop}", f"{size} steps per call", common.ms(ms),
           f"{compiles[name]:.2f}", "ms per HVP"]


def linearize_rows(pb: peers.Problem, repeats: int):
  v = dg.tree_random_like(jax.random.key(1), pb.params)
  hvp = jax.jit(functools.partial(dg.hvp, pb.loss_fn))
  grad = lambda p: jax.grad(pb.loss_fn)(p, pb.batch)
  linear_map = jax.jit(lambda p: jax.linearize(grad, p)[1])(pb.params)
  apply = jax.jit(lambda f, t: f(t))
  times = common.interleaved_ms({"hvp": lambda: hvp(pb.params, pb.batch, v),
                                 "linearized": lambda: apply(linear_map, v)}, repeats)
  yield ["HVP form", "jitted dg.hvp (forward over reverse)", common.ms(times["hvp"]), "", ""]
  yield ["HVP form", "apply jax.linearize's map of the gradient", common.ms(times["linearized"]),
         "", f"{times['linearized'] / times['hvp']:.2f}x; its residuals cross every call"]


def donation_rows(pb: peers.Problem, repeats: int):
  """A chunk's call shape: (operands, start, carry) in, carry out; the carry donated or not."""
  operands, carry = (pb.params, pb.batch), [jax.tree.map(jnp.copy, pb.params)]
  body = lambda ops, start, c: jax.tree.map(lambda x: x + start, c)
  plain, donating = jax.jit(body), jax.jit(body, donate_argnums=2)

  def step(fn):
    carry[0] = fn(operands, 1, carry[0])
    return carry[0]

  times = common.interleaved_ms({"plain": lambda: step(plain), "donated": lambda: step(donating)},
                                repeats * 50)
  yield ["carry donation", "jitted call (operands, start, carry) -> carry",
         common.ms(times["plain"]), "", "a call's cost when its work is negligible"]
  yield ["carry donation", "the same, donating the carry", common.ms(times["donated"]), "",
         f"{times['donated'] / times['plain']:.1f}x"]


def probe_rows(pb: peers.Problem):
  key = jax.random.key(0)
  leaves, treedef = jax.tree.flatten(pb.params)

  def shaped(k):
    keys = jax.random.split(k, len(leaves))
    return [jax.random.rademacher(kk, leaf.shape, leaf.dtype) for kk, leaf in zip(keys, leaves)]

  flat = lambda k: jax.tree.leaves(dg.tree_random_like(k, pb.params, "rademacher"))
  seconds = {"shaped": compile_seconds(shaped, key), "flat": compile_seconds(flat, key)}
  same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.jit(shaped)(key), jax.jit(flat)(key)))
  yield ["probe draw", "Rademacher in each leaf's shape", "", f"{seconds['shaped']:.2f}", ""]
  yield ["probe draw", "flat per leaf, reshaped (dg.tree_random_like)", "",
         f"{seconds['flat']:.2f}", f"same numbers: {same}"]


def orthogonalize_rows(models: dict, rows_in_basis: int, repeats: int):
  def multiply_and_reduce(basis, x):
    for _ in range(2):
      dots = sum(jnp.sum((rows * leaf[None]).reshape(rows.shape[0], -1), axis=1)
                 for rows, leaf in zip(jax.tree.leaves(basis), jax.tree.leaves(x)))
      x = jax.tree.map(lambda leaf, rows: leaf - jnp.sum(
          dots.reshape((-1,) + (1,) * leaf.ndim) * rows, axis=0), x, basis)
    return x

  for name, params in models.items():
    rng = np.random.default_rng(0)
    basis = jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=(rows_in_basis,) + p.shape), p.dtype), params)
    reduce_jit, dot_jit = jax.jit(multiply_and_reduce), jax.jit(spectrum._orthogonalize)
    times = common.interleaved_ms({"reduce": lambda: reduce_jit(basis, params),
                                   "dot": lambda: dot_jit(basis, params)}, repeats)
    size = dg.tree_size(params)
    yield ["Lanczos reorthogonalisation", f"{name}, {size:,} params: multiply and reduce",
           common.ms(times["reduce"]), "", f"against {rows_in_basis} rows, twice"]
    yield ["Lanczos reorthogonalisation", f"{name}, {size:,} params: matrix-vector products",
           common.ms(times["dot"]), "", f"{times['reduce'] / times['dot']:.1f}x faster"]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
  parser.add_argument("--repeats", type=int, default=7, help="timed repetitions")
  args = parser.parse_args(argv)
  repeats = 1 if args.quick else args.repeats
  sizes = peers.QUICK if args.quick else peers.Sizes()
  print(common.machine_line(f"peers' CNN widths {sizes.widths}, {sizes.examples} examples; "
                            f"median of {repeats}"))
  pb = peers.make_problem(sizes)
  conv_sizes = loop_lowering.QUICK if args.quick else loop_lowering.Sizes(num_grads=1)
  models = {"peers' CNN": pb.params, "loop_lowering's CNN":
            loop_lowering.make_problem(conv_sizes)[0]}
  rows = list(chunk_rows(pb, (1, 4) if args.quick else (1, 2, 4, 8), 8 if args.quick else 16,
                         repeats))
  rows += list(linearize_rows(pb, repeats))
  rows += list(donation_rows(pb, repeats))
  rows += list(probe_rows(pb))
  rows += list(orthogonalize_rows(models, 8 if args.quick else 128, repeats))
  print(common.table(HEADER, rows, "llrrl"))
  print(common.end_line())


if __name__ == "__main__":
  main()
