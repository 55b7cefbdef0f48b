"""The Figure 6 contrast: the quickstart's network on un-augmented digits, which it fits.

Data: scikit-learn's bundled 8x8 digits (1,500 training images), no augmentation. The
small CNN (SGD with momentum 0.9, learning rate 0.1, weight decay 5e-4, constant rate)
fits the training set almost exactly: the training loss falls to ~0.005 and the full
gradient norm falls ~95% from its early value, the regime of the paper's Figure 6 (where
the gradient does vanish), not of Figure 1. `configs/quickstart.py` is the same network
on a task it cannot interpolate. Overlay the two:

    python -m experiments.run --config=configs/digits_interpolation.py --workdir=runs/fit
    python -m experiments.plot --workdir=runs/quickstart --workdir=runs/fit --out_dir=runs/both
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: '' for the quickstart, 'tiny' for a seconds-long smoke run."""
  config = base.get_config()  # SGD 0.1, momentum 0.9, weight decay 5e-4, constant rate
  config.dataset = "digits"  # scikit-learn's 8x8 digits, 1,500 train / 297 test
  config.num_classes = 10

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"  # a name in invmeasure.models.registry.MODELS
  config.model.widths = (32, 64)  # conv channels per block (each block halves the size)
  config.model.batchnorm = False
  config.model.dropout_rate = 0.0

  config.batch_size = 32  # global batch, split over the devices
  config.num_epochs = 200  # num_train_steps = num_epochs * (1500 // batch_size)

  config.diagnostics.every_steps = 46  # once an epoch
  config.diagnostics.at_epoch_end = True  # and at every epoch's end (paper eq. 3)

  config.diagnostics.projection_every_steps = 5  # ~1,800 samples of the iterates' measure

  config.log_every_steps = 46  # a training row (mean minibatch loss) every this many steps
  config.checkpoint_every_steps = 920

  if arg == "tiny":
    config.num_train_steps = 12
    config.model.widths = (8,)
    config.diagnostics.every_steps = 4
    config.diagnostics.num_minibatches = 2
    config.diagnostics.projection_every_steps = 3
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
  elif arg:
    raise ValueError(f"configs/digits_interpolation.py takes '' or 'tiny', not {arg!r}")
  return config
