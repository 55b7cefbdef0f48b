"""How the diagnostics run their loops: compiled, and fast on every backend.

XLA:CPU runs the weight-gradient convolutions of a backward pass 20-110x slower inside a
while loop or a conditional than in straight-line code (benchmarks/loop_lowering.py), and
an unrolled loop compiles one copy of its body per iteration. So every looping diagnostic
is written as an `Algorithm` of pure phases (init, step, finish) and `run` picks how to
execute it:

- Called with concrete arrays (outside `jax.jit`), every phase is compiled once and
  cached, keyed on the algorithm and its static settings (`loss_fn` among them); jit
  adds shapes, dtypes and shardings. On CPU, Python drives compiled chunks of unrolled
  steps (straight-line code, which XLA:CPU lowers well), as many per chunk as the
  largest divisor of the length up to CHUNK, so one chunk program is compiled: the run
  time per step is that of separate jitted calls or better (benchmarks/loop_driving.py)
  and the compile time does not grow with the length. On accelerators one compiled call
  runs the whole loop as a `lax` loop.
- Traced (inside `jax.jit`), the phases are inlined: on CPU loops of at most
  MAX_INLINE_UNROLL steps unroll and longer ones run as `lax` loops with a warning
  (`CpuLoopWarning`); on accelerators loops are `lax` loops.

`unroll=True` unrolls the whole loop and `unroll=False` always runs a `lax` loop.

Unrolled independent iterations (the K gradients of `gradient_stats`, Hutchinson's
probes) run side by side under XLA:CPU's default scheduler, which keeps each one's working
memory: it grows with the unrolled length (benchmarks/memory.py), which chunks bound.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp

# Steps per compiled call when Python drives a loop on CPU: on a 1.4k-parameter CNN a
# chunk of 4 runs a Hessian-vector product 1.45-1.5x faster than a chunk of 1; 8 is
# slower for independent steps and 5% faster for dependent ones, and compiles 1.2-1.6x
# as long (benchmarks/loop_choices.py).
CHUNK = 4
# Longest loop unrolled by default inside a trace on CPU (compile time grows with it).
MAX_INLINE_UNROLL = 8


class CpuLoopWarning(UserWarning):
  """A diagnostic's loop runs as a `lax` loop on CPU, slow for convolutional models."""


class Algorithm(NamedTuple):
  """A loop as pure phases; `static` is hashable, `operands` a pytree of arrays.

  init(static, operands) -> carry; step(static, operands, i, carry) -> carry;
  finish(static, operands, carry) -> result; done(static, carry) -> bool scalar, or
  None: once true, later steps leave the carry as it is (and may be skipped).
  Every function is defined at module level, so that compiled phases can be cached.
  """
  init: Callable
  step: Callable
  finish: Callable
  done: Callable | None = None


def run(algorithm: Algorithm, static: Hashable, operands: Any, num_steps: int, *,
        unroll: bool | None) -> Any:
  """finish(carry) after num_steps steps from init, executed as the module doc says."""
  if is_concrete(operands):
    if unroll is None and platform(operands) == "cpu":
      return _run_chunked(algorithm, static, operands, num_steps)
    loop = "lax" if not unroll else "unroll"
    return compiled(_run_inline, (algorithm, static, num_steps, loop))(operands)
  loop = "unroll" if resolve_unroll(unroll, num_steps) else "lax"
  return _run_inline((algorithm, static, num_steps, loop), operands)


def call(fn: Callable, static: Hashable, operands: Any) -> Any:
  """fn(static, operands): compiled and cached when the operands are concrete."""
  if is_concrete(operands):
    return compiled(fn, static)(operands)
  # Traced, inline: a cache entry would keep `static`'s closure (and its tracers) alive.
  return fn(static, operands)


def is_concrete(operands: Any) -> bool:
  """No leaf is traced. (Inside jax.jit concrete operands still give traced results:
  `_run_chunked` checks its first one.)"""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(operands))


def platform(operands: Any) -> str:
  """The platform the operands' arrays live on ('cpu', 'gpu', 'tpu')."""
  for leaf in jax.tree.leaves(operands):
    if isinstance(leaf, jax.Array):
      return next(iter(leaf.devices())).platform
  return jax.default_backend()


def compiled(fn: Callable, static: Hashable, donate_carry: bool = False) -> Callable:
  """jax.jit(fn) with `static` bound first; with donate_carry, the last argument is donated.

  Cached on (fn, static), so a second call with the same settings and shapes does not
  recompile. `static` holds `loss_fn`: pass the same function object each time. An
  unhashable `loss_fn` (say, a callable object holding arrays) still works, compiled anew
  on every call.
  """
  try:
    return _compiled_cached(fn, static, donate_carry)
  except TypeError:  # unhashable static
    return _jit(fn, static, donate_carry)


@functools.lru_cache(maxsize=128)  # holds loss_fn: bounded
def _compiled_cached(fn: Callable, static: Hashable, donate_carry: bool) -> Callable:
  return _jit(fn, static, donate_carry)


def _jit(fn: Callable, static, donate_carry: bool) -> Callable:
  bound = functools.partial(fn, static)
  if donate_carry:
    return jax.jit(bound, donate_argnums=2)
  return jax.jit(bound)


def resolve_unroll(unroll: bool | None, length: int) -> bool:
  """Inside a trace: `unroll` if given; else unroll short loops on CPU, warning on long."""
  if unroll is not None:
    return bool(unroll)
  on_cpu = jax.default_backend() == "cpu"
  if on_cpu and length > MAX_INLINE_UNROLL:
    # Silent, this costs a convolutional model 20-110x its run time (docs/benchmarks.md).
    warnings.warn(
        f"a {length}-step diagnostic loop inside jax.jit runs as a lax loop on CPU, where "
        "XLA runs convolution gradients 20-110x slower than in straight-line code. Call "
        "the diagnostic outside jax.jit (it compiles and caches its own steps and drives "
        "them from Python), or pass unroll=True (compile time grows with the length); "
        "unroll=False silences this.", CpuLoopWarning, stacklevel=4)
  return on_cpu and length <= MAX_INLINE_UNROLL


def fori_loop(num_iters: int, body: Callable, carry, *, unroll: bool):
  """`body(i, carry) -> carry` for i in range(num_iters), unrolled or as a lax loop."""
  if unroll:
    for i in range(num_iters):
      carry = body(i, carry)
    return carry
  return jax.lax.fori_loop(0, num_iters, body, carry)


def _guarded_step(algorithm: Algorithm, static, operands, i, carry):
  """One step, or none once `done`: keeps unrolled and early-exit loops equal."""
  new = algorithm.step(static, operands, i, carry)
  if algorithm.done is None:
    return new
  stop = algorithm.done(static, carry)
  return jax.tree.map(lambda old, nw: jnp.where(stop, old, nw), carry, new)


def _run_inline(spec: tuple, operands):
  """The whole algorithm as one traceable function; spec = (algorithm, static, n, loop)."""
  algorithm, static, num_steps, loop = spec
  carry = algorithm.init(static, operands)
  if loop == "unroll":
    for i in range(num_steps):
      carry = _guarded_step(algorithm, static, operands, i, carry)
  elif algorithm.done is None:
    carry = jax.lax.fori_loop(
        0, num_steps, lambda i, c: algorithm.step(static, operands, i, c), carry)
  else:
    def go_on(indexed):
      i, c = indexed
      return (i < num_steps) & ~algorithm.done(static, c)
    _, carry = jax.lax.while_loop(
        go_on, lambda ic: (ic[0] + 1, algorithm.step(static, operands, *ic)), (0, carry))
  return algorithm.finish(static, operands, carry)


def _init(spec: tuple, operands):
  algorithm, static = spec
  return algorithm.init(static, operands)


def _chunk(spec: tuple, operands, start, carry):
  """`size` guarded steps from step `start`, unrolled; spec = (algorithm, static, size)."""
  algorithm, static, size = spec
  for j in range(size):
    carry = _guarded_step(algorithm, static, operands, start + j, carry)
  return carry


def _finish(spec: tuple, operands, carry):
  algorithm, static = spec
  return algorithm.finish(static, operands, carry)


def _run_chunked(algorithm: Algorithm, static, operands, num_steps: int):
  """Python drives compiled chunks of at most CHUNK steps between init and finish."""
  carry = compiled(_init, (algorithm, static))(operands)
  if not is_concrete(carry):  # called inside jax.jit with concrete operands only
    loop = "unroll" if resolve_unroll(None, num_steps) else "lax"
    return _run_inline((algorithm, static, num_steps, loop), operands)
  # One chunk size per call, the largest that divides the length: one program to compile.
  size = max(c for c in range(1, CHUNK + 1) if num_steps % c == 0)
  # The carry is donated: a Lanczos basis is updated in place, not copied per chunk.
  chunk = compiled(_chunk, (algorithm, static, size), True)
  for start in range(0, num_steps, size):
    carry = chunk(operands, start, carry)
    if algorithm.done is not None and bool(algorithm.done(static, carry)):
      break
  return compiled(_finish, (algorithm, static))(operands, carry)
