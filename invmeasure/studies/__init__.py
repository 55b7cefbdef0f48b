"""invmeasure.studies: experiments at fixed weights restored from a run.

- `restore`: a run's plan and its states at saved checkpoints, from the workdir alone.
- `estimators`: how many minibatches the estimates of f, ||grad f||^2, the noise and the
  sharpness need (the paper's appendix A.2, Figures 7 and 8).
- `step_size`: the full-data change after one optimizer step scaled by c (Theorem 5.2).

    from invmeasure.studies import estimators, restore, step_size
    plan, state = restore.load_run_state("runs/quickstart")
    study = estimators.estimator_convergence(plan, state, (1, 4, 16, 64), 10, seed=0)

Figures of both are in `invmeasure.studies.figures`.
"""

from invmeasure.studies import estimators, restore, step_size
from invmeasure.studies.estimators import EstimatorStudy, estimator_convergence
from invmeasure.studies.restore import checkpoint_steps, load_run_state, load_run_states
from invmeasure.studies.step_size import StepSizeStudy, step_size_study
