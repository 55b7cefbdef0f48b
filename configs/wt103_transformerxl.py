"""WikiText-103 + Transformer-XL, the paper's Figure 3.

The original code's base model and training (`run_wt103_base.sh`): d_model 410, 10 heads
of 41, feed-forward 2100, dropout 0.1, dropatt 0.0, adaptive input and softmax cut at
20000/40000/200000 with div_val 1, tied word vectors and tail projections, segments of
150 tokens on a memory of 150, batch 60, Adam at 2.5e-4 with a cosine decay to 0 over
200,000 steps, no warmup, the gradient norm clipped at 0.25 (`train.py`'s default) and
no weight decay. As the paper's text says, the number of layers is reduced, to 4 (the
text says from 6; the original's base script has 16, which `--config.model.n_layer=16`
restores).
Figure 3 also trains at constant learning rates (their values were lost from the paper's
text; `FIGURE3_LEARNING_RATES` holds ours). Diagnostics every 5,000 steps on 800 random
segments of 60 x 150 tokens, as the original's 800 batches, with 5 power iterations;
they are evaluated with an empty memory and without dropout (see
`invmeasure.training.lm_task`).

Needs WikiText-103 prepared once (manual download of wikitext-103-v1.zip):
`python -m invmeasure.data.wikitext103 --manual_dir=DIR`.

Batch 60 splits over 1, 2, 3, 4, 5, 6, 10, 12, ... devices, not 8: on 8 the config check
says so; use `--config.batch_size=64` there, or fewer devices (the dry-run test uses 4).

`tiny`: test and smoke data (the synthetic `tiny_text` stream, not WikiText) and a 2-layer
model of width 32 that trains 60 steps in seconds on a CPU, plus compilation.

    python -m experiments.run --config=configs/wt103_transformerxl.py --workdir=runs/wt103
    python -m experiments.run --config=configs/wt103_transformerxl.py:constant,lr=1e-4 ...
    python -m experiments.run --config=configs/wt103_transformerxl.py:sgd,lr=0.1 ...
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
      python -m experiments.run --config=configs/wt103_transformerxl.py --workdir=X --dry_run
    python -m experiments.run --config=configs/wt103_transformerxl.py:tiny --workdir=/tmp/lm
"""

import ml_collections

FIGURE3_LEARNING_RATES = (2.5e-4, 1e-4, 2.5e-5)
_ARGS = ("constant", "lr", "steps", "sgd", "tiny")


def parse_arg(arg: str, allowed: tuple[str, ...] = _ARGS,
              path: str = "configs/wt103_transformerxl.py") -> dict:
  """'constant,lr=1e-4,tiny' -> {'constant': True, 'lr': '1e-4', 'tiny': True}."""
  out = {}
  for part in filter(None, arg.split(",")):
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip() if value else True
  unknown = set(out) - set(allowed)
  if unknown:
    raise ValueError(f"{path}: unknown argument(s) {sorted(unknown)}; use any of "
                     + ", ".join(f"{a}=X" if a in ("lr", "steps") else a for a in allowed))
  return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: comma-separated: 'constant' (a constant rate), 'lr=X', 'steps=N', 'sgd'
  (SGD with momentum 0.9 instead of Adam, default rate 0.1), 'tiny' (seconds on a CPU)."""
  args = parse_arg(arg)
  sgd = bool(args.get("sgd"))
  config = ml_collections.ConfigDict()
  config.experiment = "train"  # experiments/run.py runs the training driver
  config.seed = 0  # weights, dropout and diagnostic segments
  config.dataset = "wikitext103"  # prepared TFDS wikitext103; 'tiny_text': synthetic test data
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir; None: the default

  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer_xl"  # a name in invmeasure.models.registry.MODELS
  config.model.n_layer = 4  # the paper's reduced depth (the original base: 16)
  config.model.d_model = 410
  config.model.n_head = 10
  config.model.d_head = 41
  config.model.d_inner = 2100  # feed-forward width
  config.model.dropout = 0.1
  config.model.dropatt = 0.0  # dropout on the attention probabilities
  config.model.cutoffs = (20000, 40000, 200000)  # adaptive input and softmax clusters
  config.model.div_val = 1  # every cluster's word vectors as wide as d_model
  config.model.tie_weight = True  # output word vectors are the input embeddings
  config.model.tgt_len = 150  # tokens per segment (one training step reads one per row)
  config.model.mem_len = 150  # tokens of memory carried from segment to segment
  config.model.dtype = "float32"  # compute dtype, 'float32' or 'bfloat16' (params float32)

  config.batch_size = 60  # rows of the training stream, split over the devices
  config.num_train_steps = int(args.get("steps", 200000))  # the original's max_step
  config.num_epochs = 0.0  # used when num_train_steps is 0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd" if sgd else "adam"
  config.optimizer.learning_rate = float(args.get("lr", 0.1 if sgd else 2.5e-4))
  config.optimizer.momentum = 0.9  # SGD only
  config.optimizer.weight_decay = 0.0  # the original uses none
  config.optimizer.clip_norm = 0.25  # global gradient-norm clipping (the original's --clip)

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "constant" if args.get("constant") else "cosine"  # to 0 over the run
  config.schedule.warmup_epochs = 0.0  # the original's warmup_step is 0

  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.every_steps = 5000  # a diagnostic round every this many steps (0: never)
  config.diagnostics.at_epoch_end = False  # also at every epoch's end (11,469 steps)
  config.diagnostics.augment = "none"  # rounds run dropout off (lm_task.py)
  config.diagnostics.memory = "empty"  # rounds' segments see no memory (lm_task.py)
  config.diagnostics.batch_size = 60  # rows per random segment batch (training size)
  config.diagnostics.num_minibatches = 800  # K segment batches per round, as the original
  config.diagnostics.sharpness_iters = 5  # power iterations
  config.diagnostics.sharpness_tol = 0.0  # early stop on relative change (0: run all)

  config.log_every_steps = 200  # a training row (mean segment loss), as the original's log
  config.checkpoint_every_steps = 5000

  if args.get("tiny"):
    config.dataset = "tiny_text"  # 20,000 synthetic tokens over 50 ids, in memory
    config.model.n_layer = 2
    config.model.d_model = 32
    config.model.n_head = 2
    config.model.d_head = 16
    config.model.d_inner = 64
    # A plain tied softmax: it compiles faster, and unlike an adaptive one with tiny
    # clusters it keeps runs on 1 and 8 devices within 2e-4 of each other at this rate.
    config.model.cutoffs = ()
    config.model.tgt_len = 32
    config.model.mem_len = 32
    config.batch_size = 16  # 1,250 tokens a row: 39 steps an epoch
    config.num_train_steps = int(args.get("steps", 60))
    config.optimizer.learning_rate = float(args.get("lr", 0.1 if sgd else 5e-3))
    config.diagnostics.every_steps = 20
    config.diagnostics.batch_size = 16
    config.diagnostics.num_minibatches = 2
    config.diagnostics.sharpness_iters = 2
    config.log_every_steps = 2
    config.checkpoint_every_steps = 10
  return config


def sweep() -> list[str]:
  """Figure 3's constant-rate runs as config arguments."""
  return [f"constant,lr={lr}" for lr in FIGURE3_LEARNING_RATES]
