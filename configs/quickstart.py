"""Quickstart: the paper's Figure 1 in miniature, about two minutes on a laptop CPU, offline.

A CPU twin of the ImageNet experiment, shipped with the install: scikit-learn's bundled
8x8 digits (1,500 training images), a small CNN, SGD with momentum 0.9, learning rate 0.1
and weight decay 5e-4 at a constant rate. Like ImageNet under random-resized crops, the
task cannot be interpolated: every training image is drawn afresh each step, moved by up
to one pixel each way and covered with Gaussian pixel noise (std 0.75 of the pixels'
spread), so the training loss plateaus well above zero (~0.35) and the gradient of the
objective F = f + lambda/2 ||x||^2 stays at about half its early size while the loss is
flat. The diagnostic rounds measure that objective: their minibatches are augmented the
same way, with fresh draws (`diagnostics.augment='train'`).

Time scale: the weight norm relaxes over about (1 - momentum) / (lr * weight_decay) =
0.1 / (0.1 * 5e-4) = 2,000 steps; the run lasts 20,010 steps (435 epochs), about ten
relaxation times, so the iterates reach their stationary regime and spend the second
half in it. `configs/digits_interpolation.py` is the same network on un-augmented digits,
which it fits (the paper's Figure 6). How the three regime properties come out on seeds
0, 1, 2: `python -m experiments.regime --workdir=DIR` after
`python -m experiments.run --config=configs/quickstart.py --workdir=DIR --seeds=0,1,2`
(docs/regime.md).

    python -m experiments.run --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections

from configs import digits_interpolation


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: '' for the quickstart, 'tiny' for a seconds-long smoke run."""
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/quickstart.py takes '' or 'tiny', not {arg!r}")
  config = digits_interpolation.get_config(arg)
  config.augmentation = "shift_noise"  # fresh every step: what makes the task unfittable
  config.augmentation_shift = 1  # pixels, each way
  config.augmentation_noise_std = 1.0  # Gaussian pixel noise, in normalised units
  config.diagnostics.augment = "train"  # rounds measure the augmented objective
  if not arg:
    config.num_epochs = 435  # 20,010 steps: ten relaxation times of the weight norm
    config.diagnostics.every_steps = 23  # twice an epoch
    config.diagnostics.projection_every_steps = 10  # ~2,000 samples of the iterates' measure
    config.checkpoint_every_steps = 2300
  return config
