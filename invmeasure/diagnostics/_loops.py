"""Loops that XLA runs well on every backend.

XLA:CPU runs the weight-gradient convolutions of a backward pass 20-70x slower when they
sit inside a while loop or a conditional (measured: benchmarks/loop_lowering.py). On CPU
we therefore unroll bounded loops into straight-line code; on accelerators we keep
`lax` loops, which compile once and run at full speed.
"""

from __future__ import annotations

from typing import Callable

import jax


def default_unroll() -> bool:
  return jax.default_backend() == "cpu"


def resolve_unroll(unroll: bool | None) -> bool:
  return default_unroll() if unroll is None else bool(unroll)


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
