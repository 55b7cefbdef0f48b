"""invmeasure.diagnostics: training-dynamics measurements for any JAX model.

Every function takes `loss_fn(params, batch) -> scalar` (the mean loss of one minibatch)
and a pytree `params` of floating-point arrays; all are pure and jittable, and run
unchanged on arrays sharded over a `jax.sharding.Mesh`.

    from invmeasure import diagnostics as dg
"""

from invmeasure.diagnostics._tree_math import tree_norm, tree_vdot
from invmeasure.diagnostics.curvature import (
    SharpnessResult, directional_sharpness, hvp, sharpness)
