"""ImageNet + ResNet-101, the paper's Figures 1 and 2.

Figure 1: SGD with momentum 0.9, batch 256, learning rate 0.1 divided by 10 every 30
epochs, 90 epochs, weight decay 1e-4 added to the gradient (the paper's PyTorch code),
random-resized crops and flips. Diagnostics as the original code: the gradient noise over
600 minibatches of 256 images (the original's 250 does not split over 8 devices), each
augmented as training images are, with fresh random-resized crops and flips, so that the
rounds measure the objective SGD follows (`diagnostics.augment='train'`; 'none' gives
center crops), 5 power iterations, once per epoch here (configurable).
Figure 2: a constant learning rate for all 90 epochs (the paper's values were lost from
its text; `FIGURE2_LEARNING_RATES` holds ours), and the second of them continued to 300
epochs. Needs ImageNet prepared once (manual download): `tfds build imagenet2012
--manual_dir=DIR --file_format=array_record`.

    python -m experiments.run --config=configs/imagenet_resnet101.py --workdir=runs/in101
    python -m experiments.run --config=configs/imagenet_resnet101.py:constant,lr=0.01 ...
    python -m experiments.run --config=configs/imagenet_resnet101.py:constant,lr=0.01,epochs=300 ...
    python -m experiments.run --config=configs/imagenet_resnet101.py --workdir=DIR --dry_run
    python -m experiments.run --config=configs/imagenet_resnet101.py:tiny --workdir=/tmp/in
"""

import ml_collections

from configs import base

FIGURE2_LEARNING_RATES = (0.1, 0.01, 0.001)


def parse_arg(arg: str) -> dict:
  """'constant,lr=0.01,epochs=300,tiny' -> {'constant': True, 'lr': '0.01', ...}."""
  out = {}
  for part in filter(None, arg.split(",")):
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip() if value else True
  unknown = set(out) - {"constant", "lr", "epochs", "tiny"}
  if unknown:
    raise ValueError(f"configs/imagenet_resnet101.py: unknown argument(s) {sorted(unknown)}; "
                     "use any of constant, lr=X, epochs=N, tiny")
  return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: comma-separated: 'constant' (Figure 2), 'lr=X', 'epochs=N', 'tiny'."""
  args = parse_arg(arg)
  config = base.get_config()  # SGD with momentum 0.9, coupled L2 weight decay
  config.dataset = "imagenet2012"  # TFDS imagenet2012 (ArrayRecord), 1,281,167 train images
  config.num_classes = 1000
  config.augmentation = "none"  # random-resized crop + flip happen on the host for ImageNet
  config.data_workers = -1  # processes that decode and crop; -1: one per core this process may use

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet"  # a name in invmeasure.models.registry.MODELS
  config.model.depth = 101  # 44.5M parameters with 1000 classes
  config.model.stem = "imagenet"  # 7x7/2 conv + 3x3/2 max-pool
  config.model.width = 64  # stem channels
  config.model.zero_init_residual = False  # True: each block's last BN scale starts at 0
  config.model.dtype = "float32"  # compute dtype, 'float32' or 'bfloat16' (params float32)

  config.batch_size = 256  # global batch, split over the devices
  config.num_epochs = float(args.get("epochs", 90))  # steps = epochs * (1281167 // 256)

  config.optimizer.learning_rate = float(args.get("lr", 0.1))  # base learning rate
  config.optimizer.weight_decay = 1e-4  # L2 added to the gradient, as the paper's PyTorch code

  config.schedule.name = "constant" if args.get("constant") else "step"  # Fig. 2 / Fig. 1
  config.schedule.boundaries_epochs = (30.0, 60.0)  # step schedule: x0.1 every 30 epochs

  config.diagnostics.every_steps = 5004  # one epoch of batch 256
  config.diagnostics.batch_size = 256  # images per minibatch (original: 250; 256 splits over 8)
  config.diagnostics.num_minibatches = 600  # K minibatches per round, as the original

  config.log_every_steps = 100  # a training row (mean minibatch loss) every this many steps
  config.checkpoint_every_steps = 5004  # once an epoch

  if args.get("tiny"):
    config.num_train_steps = 3
    config.batch_size = 8
    config.data_workers = 0  # 8-image batches: decode in the loop's thread
    config.model.depth = 18
    config.model.width = 8
    config.diagnostics.every_steps = 2
    config.diagnostics.batch_size = 8
    config.diagnostics.num_minibatches = 2
    config.diagnostics.sharpness_iters = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
  return config


def sweep() -> list[str]:
  """Figure 2's runs as config arguments: each constant rate for 90 epochs, the second
  continued to 300."""
  runs = [f"constant,lr={lr}" for lr in FIGURE2_LEARNING_RATES]
  return runs + [f"constant,lr={FIGURE2_LEARNING_RATES[1]},epochs=300"]
