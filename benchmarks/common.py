"""What the benchmark scripts share: the machine line, interleaved timing, tables.

Every script prints, before its tables, one line saying what ran where: versions, CPU,
cores, XLA_FLAGS, the date and the 1-minute load average at the start (and the tables
end with the load at the end), because other jobs on a shared machine change timings.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a file from a checkout that is not pip-installed
  sys.path.insert(0, ROOT)


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else the platform's machine type."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def load() -> float:
  """The 1-minute load average (what other processes add to ours)."""
  return os.getloadavg()[0]


def machine_line(extra: str = "") -> str:
  """One line: versions, CPU, cores, device count, XLA_FLAGS, date, load now."""
  try:
    import torch
    torch_version = f", torch {torch.__version__}"
  except ImportError:
    torch_version = ", no torch"
  when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  parts = [f"jax {jax.__version__}{torch_version}", f"{cpu_model()} ({platform.machine()}), "
           f"{os.cpu_count()} cores, {jax.device_count()} {jax.default_backend()} device(s)",
           f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", f"{when}, load {load():.2f}"]
  return "; ".join(parts + ([extra] if extra else []))


def block(tree):
  return jax.block_until_ready(tree)


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int, *,
                   warmup: int = 1, per_call: dict[str, int] | None = None) -> dict[str, float]:
  """Median milliseconds of each zero-argument callable (results blocked on).

  Every repetition runs all callables in turn, so load from other processes falls on
  all of them alike. `per_call[name]` divides that callable's time (e.g. steps per call).
  """
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      block(fn())
      times[name].append(1e3 * (time.perf_counter() - start))
  per_call = per_call or {}
  return {name: statistics.median(t) / per_call.get(name, 1) for name, t in times.items()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
  """(fn's result blocked on, seconds it took)."""
  start = time.perf_counter()
  out = block(fn())
  return out, time.perf_counter() - start


def table(header: Sequence[str], rows: Iterable[Sequence[object]],
          align: str | None = None) -> str:
  """A markdown table; `align` is one of 'l'/'r' per column (default: first l, rest r)."""
  header = list(header)
  align = align or "l" + "r" * (len(header) - 1)
  marks = ["---" if a == "l" else "---:" for a in align]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def ratio(a: float, b: float) -> str:
  if not (a == a and b == b) or b == 0:  # NaN or missing
    return "n/a"
  return f"{a / b:.2f}x"


def ms(x: float) -> str:
  return "n/a" if x != x else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def check_same_loss(jax_loss: float, torch_loss: float, atol: float) -> None:
  """The two models must compute the same function, or the comparison means nothing."""
  diff = abs(jax_loss - torch_loss)
  print(f"loss check: JAX {jax_loss:.6f}, PyTorch {torch_loss:.6f}, |difference| {diff:.1e} "
        f"(must be <= {atol:g})")
  if diff > atol:
    raise SystemExit("the Flax and PyTorch models disagree; the timings would be meaningless")


def torch_conv_weight(kernel) -> np.ndarray:
  """A Flax convolution kernel (HWIO) in PyTorch's layout (OIHW)."""
  return np.asarray(kernel).transpose(3, 2, 0, 1)


def copy_to_torch(parameters, values) -> None:
  """Copy arrays, in order, into PyTorch parameters of the same shapes."""
  import torch
  parameters = list(parameters)
  assert len(parameters) == len(values), (len(parameters), len(values))
  with torch.no_grad():
    for p, v in zip(parameters, values):
      v = np.array(v, np.float32)  # a writable copy for torch.from_numpy
      assert tuple(p.shape) == v.shape, (tuple(p.shape), v.shape)
      p.copy_(torch.from_numpy(v))


def end_line() -> str:
  return f"(load at the end: {load():.2f})"
