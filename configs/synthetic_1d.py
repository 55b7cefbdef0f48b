"""The paper's synthetic experiment (section 3.4, Figure 4): 1-D gradient descent.

The function is `asymmetric_log_cosh`: f(x) = log cosh(x) for x >= 0 and
(1/4) log cosh(2x) for x < 0, a valley whose left wall has slope 1/2 and right wall
slope 1. |f'| < 1 (tending to 1 on the right) and |f''| <= 1 (equal to 1 at the minimum
x = 0), so L = 1 for both constants and the step-size threshold is 2 / L = 2:
- eta = 1.5 < 2: the iterates converge to the minimum x = 0 and the gradient norm to 0.
- eta = 3.3 > 2: the minimum is unstable; the iterates settle within ~40 steps onto a
  period-4 orbit (x ~ -1.37, -0.59, 0.27, 0.78) whose points have different losses,
  so the loss oscillates while its time average converges, and the time average of the
  gradient norm converges to ~0.46, far from 0.
A symmetric function (log cosh, sin) gives, just above 2, a 2-cycle {-a, a} whose two
losses are equal, so the loss would not visibly oscillate; that is why the asymmetry.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the config of the synthetic experiment."""
  config = ml_collections.ConfigDict()
  config.experiment = 'synthetic_1d'  # dispatches experiments/run.py to this experiment
  config.seed = 0  # unused: gradient descent on a fixed function is deterministic
  config.function = 'asymmetric_log_cosh'  # a name in invmeasure.training.synthetic_1d.FUNCTIONS
  config.x0 = 2.0  # starting point
  config.learning_rates = (1.5, 3.3)  # one run each: below and above 2 / L = 2
  config.num_steps = 300  # gradient descent steps per run
  config.log_every_steps = 1  # a metric row every this many steps (step 0 included)
  return config
