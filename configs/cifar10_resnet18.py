"""CIFAR-10 + ResNet-18, the paper's Figure 6 setting.

SGD with momentum 0.9, batch 128, learning rate 0.1 divided by 10 at epochs 100 and 150,
200 epochs, weight decay 5e-4 added to the gradient (as the paper's PyTorch code), random
crop + flip. Diagnostics about once an epoch (390 steps) on 50 training-size minibatches.
Needs CIFAR-10 prepared once: `tfds build cifar10 --file_format=array_record`.

    python -m experiments.run --config=configs/cifar10_resnet18.py --workdir=runs/cifar10
    python -m experiments.run --config=configs/cifar10_resnet18.py:tiny --workdir=/tmp/c10
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: '' for the paper's run, 'tiny' for a seconds-long smoke run."""
  config = base.get_config()  # SGD 0.1, momentum 0.9, weight decay 5e-4 (coupled L2)
  config.dataset = "cifar10"  # TFDS cifar10 (ArrayRecord), 50,000 train / 10,000 test
  config.num_classes = 10
  config.augmentation = "crop_flip"  # pad 4, random 32x32 crop, random horizontal flip

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet"  # a name in invmeasure.models.registry.MODELS
  config.model.depth = 18  # 18, 34 (basic blocks), 50, 101, 152 (bottlenecks)
  config.model.stem = "cifar"  # 3x3/1 conv, no max-pool ('imagenet': 7x7/2 + max-pool)
  config.model.width = 64  # stem channels; the four stages have 1, 2, 4, 8 times as many
  config.model.zero_init_residual = False  # True: each block's last BN scale starts at 0
  config.model.dtype = "float32"  # compute dtype, 'float32' or 'bfloat16' (params float32)

  config.batch_size = 128  # global batch, split over the devices
  config.num_epochs = 200  # num_train_steps = num_epochs * (50000 // batch_size)

  config.schedule.name = "step"  # 'constant', 'step' or 'cosine'
  config.schedule.boundaries_epochs = (100.0, 150.0)  # step schedule: epochs of lr decay

  config.diagnostics.every_steps = 390  # about once an epoch
  config.diagnostics.num_minibatches = 50  # K training-size minibatches per round

  config.log_every_steps = 100  # a training row (mean minibatch loss) every this many steps
  config.checkpoint_every_steps = 3900  # about every 10 epochs

  if arg == "tiny":
    config.num_train_steps = 3
    config.batch_size = 16
    config.model.width = 8
    config.diagnostics.every_steps = 2
    config.diagnostics.num_minibatches = 2
    config.diagnostics.sharpness_iters = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
  elif arg:
    raise ValueError(f"configs/cifar10_resnet18.py takes '' or 'tiny', not {arg!r}")
  return config
