"""Ahead-of-time check of a config: compile its programs for the devices present, no data.

This is how a full-size config is proven on a machine without its accelerators: the
train step and the pieces of a diagnostic round are lowered and compiled for the
configured global batch on the present devices (e.g. 8 simulated CPU devices), and XLA
reports their FLOPs and per-device memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from invmeasure import diagnostics as dg
from invmeasure.data import sources
from invmeasure.training import loop, step as step_lib


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


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
  plan = loop.make_plan(config, sources.NUM_TRAIN_EXAMPLES[config.dataset])
  state = _abstract(jax.eval_shape(loop.init_state_fn(plan), loop.init_key(config)),
                    plan.replicated)

  def batch(size: int) -> dict:
    return {"image": jax.ShapeDtypeStruct((size, *plan.image_shape), jnp.uint8,
                                          sharding=plan.batch_sharding),
            "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=plan.batch_sharding)}

  train_batch = batch(config.batch_size)
  diag_batch = batch(config.diagnostics.get("batch_size") or config.batch_size)
  train_step = jax.jit(step_lib.make_train_step(plan.task),
                       in_shardings=(plan.replicated, plan.batch_sharding),
                       out_shardings=(plan.replicated, plan.replicated), donate_argnums=0)
  fns = step_lib.make_diagnostic_fns(plan.task)
  jit = lambda f: jax.jit(f, out_shardings=plan.replicated)
  acc = _abstract(jax.eval_shape(fns.init, state), plan.replicated)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=plan.replicated)
  costs = {
      "train_step": _cost(train_step.lower(state, train_batch).compile()),
      "gradient_stats_update": _cost(jit(fns.accumulate).lower(state, acc, diag_batch).compile()),
      "power_iteration": _cost(jit(fns.power_step).lower(
          state, state.params, diag_batch).compile()),
      "round_summary": _cost(jit(fns.summarize).lower(
          state, acc, diag_batch, scalar, scalar).compile()),
  }
  diag = config.diagnostics
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
