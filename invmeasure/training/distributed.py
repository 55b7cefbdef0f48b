"""Starting a multi-process (multi-host) job with `jax.distributed`."""

from __future__ import annotations

import jax


def initialize(coordinator_address: str | None, num_processes: int, process_id: int,
               auto: bool = False) -> None:
  """Joins the job when it has several processes; a no-op for a single process.

  `auto` lets JAX read the cluster from the environment (Cloud TPU, SLURM, Open MPI);
  otherwise the coordinator address, process count and this process's id are given.
  """
  if not auto and num_processes <= 1:
    return
  # Cross-process collectives of CPU devices need gloo; accelerators bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
