"""Real text that every CPython ships: the language reference's help topics, as bytes.

`pydoc_data.topics` (PSF licence) holds the text `help('topic')` prints: about 465,000
characters in 3.11, 490,000 in 3.12, 510,000 in 3.13, prose mixed with code. It is read
from the running interpreter, never copied into the repository: its topics joined in
sorted key order (a blank line between them), tokenised as UTF-8 bytes, so the
vocabulary is 256 on every Python version. The text changes between releases, so a run
records the Python version, the corpus's sha256 and its length (`corpus_record`).

Held out for evaluation: every `HELDOUT_EVERY`-th block of `BLOCK_BYTES` bytes (5%),
interleaved through the corpus, so both parts share its mix of prose and code. The
training stream is the other blocks joined in order, the held-out stream the held-out
blocks joined in order.
"""

from __future__ import annotations

import functools
import hashlib
import platform

import numpy as np

from invmeasure.errors import ConfigError

VOCAB_SIZE = 256  # bytes
BLOCK_BYTES = 4096
HELDOUT_EVERY = 20  # block i is held out when i % 20 == 19: 5% of the corpus
SPLITS = ("train", "heldout")


@functools.cache  # read once per process: a config, its task and its check all need it
def corpus_bytes() -> bytes:
  """The topics of this interpreter's `pydoc_data`, joined in sorted key order, as UTF-8."""
  try:
    from pydoc_data import topics
  except ImportError:
    raise ConfigError(
        "config.dataset='pydoc_topics' needs this Python's pydoc_data module, which some "
        "distributions ship separately: install it (e.g. Debian/Ubuntu: "
        "libpython3.X-stdlib; Fedora: python3-libs) or use a python.org, pyenv or conda "
        "Python") from None
  return "\n\n".join(topics.topics[key] for key in sorted(topics.topics)).encode("utf-8")


def corpus_record(data: bytes | None = None) -> dict:
  """What a run records of its corpus: Python version, sha256, tokens in all and per split."""
  data = corpus_bytes() if data is None else data
  tokens = np.frombuffer(data, np.uint8)
  return {"python_version": platform.python_version(),
          "sha256": hashlib.sha256(data).hexdigest(),
          "num_tokens": len(tokens),
          **{f"{split}_tokens": len(split_tokens(tokens, split)) for split in SPLITS}}


def heldout_mask(num_tokens: int) -> np.ndarray:
  """bool [num_tokens]: True where a token lies in a held-out block."""
  block = np.arange(num_tokens) // BLOCK_BYTES
  return block % HELDOUT_EVERY == HELDOUT_EVERY - 1


def split_tokens(tokens: np.ndarray, split: str) -> np.ndarray:
  """int32 token ids of `split` ('train' or 'heldout') of the byte tokens `tokens`."""
  if split not in SPLITS:
    raise ConfigError(f"pydoc_topics has splits {', '.join(SPLITS)}, not {split!r}")
  heldout = heldout_mask(len(tokens))
  return np.asarray(tokens[heldout if split == "heldout" else ~heldout], np.int32)


def load_split(split: str) -> np.ndarray:
  """int32 token ids of this interpreter's corpus, split `split`."""
  return split_tokens(np.frombuffer(corpus_bytes(), np.uint8), split)
