"""invmeasure.diagnostics: training-dynamics measurements for any JAX model.

Every function takes `loss_fn(params, batch) -> scalar` (the mean loss of one minibatch)
and a pytree `params` of floating-point arrays; all are pure and jittable, and run
unchanged on arrays sharded over a `jax.sharding.Mesh`.

    from invmeasure import diagnostics as dg
"""

from invmeasure.diagnostics._tree_math import (
    tree_norm, tree_random_like, tree_size, tree_vdot)
from invmeasure.diagnostics.curvature import (
    SharpnessResult, directional_sharpness, hvp, sharpness)
from invmeasure.diagnostics.gradients import (
    GradientStats, GradientStatsState, gradient_stats, gradient_stats_accumulate,
    gradient_stats_finalize, gradient_stats_init, gradient_stats_update)
from invmeasure.diagnostics.time_average import (
    TimeAverage, TimeAverageState, TimeAverageSummary, time_average)
from invmeasure.diagnostics.spectrum import (
    HessianEigenpairs, LanczosResult, SpectralDensity, TraceResult, density_on_grid,
    hessian_trace, lanczos, slq_trace, spectral_density, top_hessian_eigenvalues)
