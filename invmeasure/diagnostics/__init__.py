"""invmeasure.diagnostics: training-dynamics measurements for any JAX model.

Every function takes `loss_fn(params, batch) -> scalar` (the mean loss of one minibatch)
and a pytree `params` of floating-point arrays; all are pure and jittable, and run
unchanged on arrays sharded over a `jax.sharding.Mesh`.

    from invmeasure import diagnostics as dg

Loops. Called with concrete arrays, a diagnostic compiles its steps once (cached on
`loss_fn`, the settings, shapes and shardings: pass the same `loss_fn` object to reuse
them) and runs at full speed on any backend; on CPU it drives compiled chunks of a few
steps from Python, because XLA:CPU runs backward convolutions inside `lax` loops 20-110x
slower. Traced inside `jax.jit`, a loop unrolls when short on CPU and is a `lax` loop
otherwise (on CPU with a `CpuLoopWarning`). `unroll=True` or `False` forces either form.
"""

from invmeasure.diagnostics._loops import CpuLoopWarning
from invmeasure.diagnostics._tree_math import (
    tree_norm, tree_random_like, tree_size, tree_vdot)
from invmeasure.diagnostics._types import Batch, LossFn, Params, PyTree
from invmeasure.diagnostics.curvature import (
    SharpnessResult, directional_sharpness, hvp, sharpness)
from invmeasure.diagnostics.gradients import (
    GradientStats, GradientStatsState, gradient_stats, gradient_stats_accumulate,
    gradient_stats_finalize, gradient_stats_init, gradient_stats_update)
from invmeasure.diagnostics.per_example import (
    NoiseScale, PerExampleStats, StepLengthPoint, cabs_batch_size, early_stopping,
    inner_test, layer_norms, mean_gsnr, noise_scale, norm_test, normalized_step_length,
    ortho_test, per_example_stats, step_length_point, tic)
from invmeasure.diagnostics.spectrum import (
    HessianEigenpairs, LanczosResult, SpectralDensity, TraceResult, density_on_grid,
    hessian_trace, lanczos, slq_trace, spectral_density, top_hessian_eigenvalues)
from invmeasure.diagnostics.time_average import (
    TimeAverage, TimeAverageState, TimeAverageSummary, time_average)

__all__ = [
    # Types.
    "Batch", "LossFn", "Params", "PyTree", "CpuLoopWarning",
    # Curvature.
    "hvp", "directional_sharpness", "sharpness", "SharpnessResult",
    # Gradient statistics.
    "gradient_stats", "gradient_stats_init", "gradient_stats_update",
    "gradient_stats_accumulate", "gradient_stats_finalize", "GradientStats",
    "GradientStatsState",
    # Per-example gradients of one minibatch (Cockpit's instruments).
    "per_example_stats", "PerExampleStats", "norm_test", "inner_test", "ortho_test",
    "mean_gsnr", "early_stopping", "cabs_batch_size", "tic", "noise_scale", "NoiseScale",
    "step_length_point", "StepLengthPoint", "normalized_step_length", "layer_norms",
    # Spectrum.
    "hessian_trace", "lanczos", "top_hessian_eigenvalues", "spectral_density",
    "density_on_grid", "slq_trace", "TraceResult", "LanczosResult", "HessianEigenpairs",
    "SpectralDensity",
    # Time averages.
    "time_average", "TimeAverage", "TimeAverageState", "TimeAverageSummary",
    # Pytree helpers.
    "tree_norm", "tree_vdot", "tree_size", "tree_random_like",
]
