"""Quickstart: the paper's phenomenon in minutes on a laptop CPU, offline.

Data: scikit-learn's bundled 8x8 digits (1,500 training images), which ship with the
install, so nothing is downloaded. A small CNN trained by SGD with momentum, weight
decay and a constant learning rate: the training loss settles while the full gradient
norm (and the gradient of the weight-decayed objective) stays away from zero.

    python -m experiments.run --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: '' for the quickstart, 'tiny' for a seconds-long smoke run."""
  config = ml_collections.ConfigDict()
  config.experiment = "train"  # experiments/run.py runs the training driver
  config.seed = 0  # weights, data order, augmentation and diagnostic minibatches
  config.dataset = "digits"  # scikit-learn's 8x8 digits, 1,500 train / 297 test
  config.num_classes = 10
  config.augmentation = "none"  # training batches: 'none' or 'crop_flip'

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"  # a name in invmeasure.models.registry.MODELS
  config.model.widths = (32, 64)  # conv channels per block (each block halves the size)
  config.model.batchnorm = False
  config.model.dropout_rate = 0.0

  config.batch_size = 32  # global batch, split over the devices
  config.num_epochs = 200  # num_train_steps = num_epochs * (1500 // batch_size)
  config.num_train_steps = 0  # when > 0, overrides num_epochs

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # 'sgd' (with momentum) or 'adam'
  config.optimizer.learning_rate = 0.1  # base learning rate
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4  # L2 added to the gradient, as the paper's PyTorch code
  config.optimizer.decoupled_weight_decay = False  # True: AdamW/SGDW-style decay

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "constant"  # 'constant', 'step' or 'cosine'
  config.schedule.boundaries_epochs = (30.0,)  # step schedule: epochs where lr is multiplied
  config.schedule.decay_factor = 0.1  # step schedule: the multiplier
  config.schedule.warmup_epochs = 0.0  # linear warmup from 0

  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.every_steps = 46  # a diagnostic round every this many steps (0: never)
  config.diagnostics.at_epoch_end = True  # also at every epoch's end (paper eq. 3)
  config.diagnostics.num_minibatches = 16  # K training-size minibatches per round
  config.diagnostics.sharpness_iters = 5  # power iterations (the paper: 5 to 10)
  config.diagnostics.sharpness_tol = 0.0  # early stop on relative change (0: run all)

  config.log_every_steps = 46  # a training row (mean minibatch loss) every this many steps
  config.checkpoint_every_steps = 920

  if arg == "tiny":
    config.num_train_steps = 12
    config.model.widths = (8,)
    config.diagnostics.every_steps = 4
    config.diagnostics.num_minibatches = 2
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
  elif arg:
    raise ValueError(f"configs/quickstart.py takes '' or 'tiny', not {arg!r}")
  return config
