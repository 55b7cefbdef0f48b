"""Loops that XLA runs well on every backend.

XLA:CPU runs the weight-gradient convolutions of a backward pass 20-80x slower when they
sit inside a while loop or a conditional (measured: benchmarks/loop_lowering.py), but an
unrolled loop compiles one copy of its body per iteration. By default (`unroll=None`) we
therefore unroll short loops on CPU, where the run time dominates, and keep `lax` loops
for long ones and on accelerators; a longer loop on CPU warns once (`CpuLoopWarning`). A
caller on CPU with a long loop over a convolutional model does best driving the
one-iteration form from Python (see the function docs), or passing `unroll=True`.

Unrolled independent iterations (the K gradients of `gradient_stats`, Hutchinson's
probes) run side by side under XLA:CPU's default scheduler, which keeps each one's working
memory: it grows with the length (benchmarks/memory.py). Compiling with
`compiler_options={"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}` in
`jax.jit` keeps it near two iterations' worth.
"""

from __future__ import annotations

import warnings
from typing import Callable

import jax


# Longest loop unrolled by default on CPU (its compile time grows with the length).
MAX_DEFAULT_UNROLL = 8


class CpuLoopWarning(UserWarning):
  """A diagnostic's loop runs as a `lax` loop on CPU, slow for convolutional models."""


def resolve_unroll(unroll: bool | None, length: int) -> bool:
  """`unroll` if given; else unroll loops of at most MAX_DEFAULT_UNROLL steps on CPU."""
  if unroll is not None:
    return bool(unroll)
  on_cpu = jax.default_backend() == "cpu"
  if on_cpu and length > MAX_DEFAULT_UNROLL:
    # Silent, this costs a convolutional model 20-80x its run time (docs/benchmarks.md).
    warnings.warn(
        f"a {length}-step diagnostic loop runs as a lax loop on CPU, where XLA runs "
        "convolution gradients 20-80x slower than in straight-line code. For a "
        "convolutional model pass unroll=True (compile time grows with the length) or "
        "drive the one-step form from Python (gradient_stats_update per minibatch, "
        "sharpness(..., num_iters=1, init=previous.eigenvector)); unroll=False silences "
        "this.", CpuLoopWarning, stacklevel=3)
  return on_cpu and length <= MAX_DEFAULT_UNROLL


def fori_loop(num_iters: int, body: Callable, carry, *, unroll: bool):
  """`body(i, carry) -> carry` for i in range(num_iters)."""
  if unroll:
    for i in range(num_iters):
      carry = body(i, carry)
    return carry
  return jax.lax.fori_loop(0, num_iters, body, carry)


def scan_leading(body: Callable, carry, xs, *, unroll: bool):
  """`body(carry, x) -> carry` over the leading axis of every leaf of `xs`."""
  if unroll:
    num = jax.tree.leaves(xs)[0].shape[0]
    for k in range(num):
      carry = body(carry, jax.tree.map(lambda leaf: leaf[k], xs))
    return carry
  return jax.lax.scan(lambda c, x: (body(c, x), None), carry, xs)[0]
