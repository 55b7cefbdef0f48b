"""Ahead-of-time check of a config: compile its programs for the devices present, no data.

This is how a full-size config is proven on a machine without its accelerators: the
train step and the pieces of a diagnostic round are lowered and compiled for the
configured global batch on the present devices (e.g. 8 simulated CPU devices), and XLA
reports their FLOPs and per-device memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from invmeasure import diagnostics as dg
from invmeasure.training import loop


def _placed(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _abstract(tree, sharding):
  """Every leaf of `tree` as an abstract array placed by one `sharding`."""
  return jax.tree.map(lambda x: _placed(x, sharding), tree)


def _cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  memory = compiled.memory_analysis()
  return {
      "flops": float(analysis.get("flops", float("nan"))) if analysis else float("nan"),
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes,
  }


def dry_run(config: ml_collections.ConfigDict) -> dict:
  """Compiles the run's programs on abstract inputs; returns (and prints) their costs."""
  plan = loop.make_plan(config, abstract=True)
  state = jax.eval_shape(loop.init_state_fn(plan), loop.init_key(config))
  state = jax.tree.map(_placed, state, plan.state_sharding)

  def batch(size: int, train: bool) -> dict:
    return _abstract(plan.task.abstract_batch(size, train), plan.batch_sharding)

  train_batch = batch(config.batch_size, train=True)
  diag_batch = batch(config.diagnostics.get("batch_size") or config.batch_size, train=False)
  fns = plan.task.diagnostic_fns()
  jit = lambda f: jax.jit(f, out_shardings=plan.replicated)
  acc = _abstract(jax.eval_shape(fns.init, state), plan.replicated)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=plan.replicated)
  costs = {
      "train_step": _cost(loop.jit_train_step(plan).lower(state, train_batch).compile()),
      "gradient_stats_update": _cost(jit(fns.accumulate).lower(state, acc,
                                                                  (diag_batch,)).compile()),
      "power_iteration": _cost(jit(functools.partial(fns.power_step, num_iters=1)).lower(
          state, _abstract(state.params, plan.replicated), scalar, diag_batch).compile()),
      "round_summary": _cost(jit(fns.summarize).lower(
          state, acc, diag_batch, diag_batch, scalar, scalar).compile()),
  }
  diag = config.diagnostics
  # One minibatch and one iteration per program: the round's chunks (several of each
  # per call on CPU) share work, so this bounds the round from above.
  round_flops = (diag.num_minibatches * costs["gradient_stats_update"]["flops"]
                 + diag.sharpness_iters * costs["power_iteration"]["flops"]
                 + costs["round_summary"]["flops"])
  # XLA's cost analysis of a partitioned program counts one device's share.
  report = {
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "device_count": jax.device_count(),
      "parameters": dg.tree_size(state.params),
      "batch_sharding": f"{config.batch_size} examples over mesh {dict(plan.mesh.shape)} "
                        f"as {plan.batch_sharding.spec}",
      "train_step_flops": costs["train_step"]["flops"],
      "diagnostic_round_flops": round_flops,
      "programs": costs,
  }
  print(format_report(report))
  return report


def format_report(report: dict) -> str:
  gib = lambda b: f"{b / 2**20:.1f} MiB"
  n = report["device_count"]
  lines = [f"devices:            {report['devices']}",
           f"parameters:         {report['parameters']:,}",
           f"batch sharding:     {report['batch_sharding']}",
           f"train step:         {report['train_step_flops'] * n:.4g} FLOPs in all, "
           f"{report['train_step_flops']:.4g} per device (XLA cost analysis)",
           f"diagnostic round:   {report['diagnostic_round_flops'] * n:.4g} FLOPs in all, "
           f"{report['diagnostic_round_flops']:.4g} per device",
           "per device (XLA):",
           f"  {'program':24s} {'arguments':>12s} {'outputs':>12s} {'temporaries':>12s} "
           f"{'FLOPs':>11s}"]
  for name, c in report["programs"].items():
    lines.append(f"  {name:24s} {gib(c['argument_bytes']):>12s} {gib(c['output_bytes']):>12s} "
                 f"{gib(c['temp_bytes']):>12s} {c['flops']:>11.4g}")
  return "\n".join(lines)
