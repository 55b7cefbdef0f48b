"""The fields every training config has, with defaults; experiment configs override a few.

See DESIGN.md for the contract: seed, dataset, model, batch_size, num_train_steps or
num_epochs, optimizer, schedule, diagnostics, checkpoint_every_steps, log_every_steps.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Defaults shared by the training configs (SGD with momentum, constant rate)."""
  config = ml_collections.ConfigDict()
  config.experiment = "train"  # experiments/run.py runs the training driver
  config.seed = 0  # weights, data order, augmentation and diagnostic minibatches
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir; None: the default
  config.augmentation = "none"  # training batches: 'none', 'crop_flip' or 'shift_noise'
  config.augmentation_shift = 1  # 'shift_noise': largest shift in pixels, each way
  config.augmentation_noise_std = 0.0  # 'shift_noise': Gaussian pixel noise (normalised units)
  config.train_examples = 0  # train on the first this many examples (0: all), to overfit

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
  config.diagnostics.every_steps = 1000  # a diagnostic round every this many steps (0: never)
  config.diagnostics.at_epoch_end = False  # also at every epoch's end (paper eq. 3)
  # 'train': each round's minibatches are augmented as training batches are (fresh draws
  # from (seed, step)), so the round measures the objective SGD follows, the expectation
  # over data and augmentation; 'none': un-augmented images, another function.
  config.diagnostics.augment = "train"
  # Measured inside the train step at every step, averaged over each training row
  # (`step_<name>`): comma-separated grad_norm, update_norm, update_sharpness; '' none.
  config.diagnostics.per_step = ""
  config.diagnostics.batch_size = 0  # examples per diagnostic minibatch (0: batch_size)
  config.diagnostics.num_minibatches = 16  # K training-size minibatches per round
  config.diagnostics.sharpness_iters = 5  # power iterations (the paper: 5 to 10)
  config.diagnostics.sharpness_tol = 0.0  # early stop on relative change (0: run all)
  # Weights (and the last update) projected on fixed random directions, written to
  # projections.jsonl: the samples of the empirical measure of the iterates.
  config.diagnostics.num_projections = 8  # directions (0: record none)
  config.diagnostics.projection_every_steps = 100  # a projection row every this many steps

  config.checkpoint_max_to_keep = 2  # the latest this many checkpoints are kept
  return config

