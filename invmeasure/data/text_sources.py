"""Token streams of the language-model data sets, by config name.

- `wikitext103`: the prepared TFDS data set (`invmeasure.data.wikitext103`), read through
  ArrayRecord; a one-line ConfigError names the prepare command when it is missing.
- `pydoc_topics`: the UTF-8 bytes of the Python language reference's help topics, read
  from the running interpreter (`invmeasure.data.pydoc_text`): real text, 5% held out.
- `tiny_text`: test and smoke data, not a benchmark. A fixed synthetic stream of
  20,000 tokens over a 50-token vocabulary, sampled in memory from a first-order Markov
  chain (each token's successors drawn from a sparse Dirichlet, so the next token is
  fairly predictable from the current one). Built from a fixed seed, so every run sees
  the same data, whatever its `config.seed`; nothing is read from disk.
"""

from __future__ import annotations

import numpy as np

from invmeasure.data import lm, pydoc_text
from invmeasure.errors import ConfigError

DATASETS = ("tiny_text", "pydoc_topics", "wikitext103")
TINY_TEXT_TOKENS = 20_000
TINY_TEXT_VOCAB = 50
_TINY_TEXT_SEED = 0
_TINY_TEXT_CONCENTRATION = 0.1  # Dirichlet parameter of each row: small is predictable


def markov_tokens(num_tokens: int, vocab_size: int, seed: int,
                  concentration: float = _TINY_TEXT_CONCENTRATION) -> np.ndarray:
  """int32 [num_tokens]: a sample path of a random Markov chain over `vocab_size` tokens.

  The transition matrix has Dirichlet(`concentration`) rows; the path starts at token 0.
  """
  rng = np.random.default_rng(seed)
  cdf = np.cumsum(rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size), axis=1)
  cdf[:, -1] = 1.0  # no draw may fall past the last token through rounding
  draws = rng.random(num_tokens)
  out = np.empty(num_tokens, np.int32)
  token = 0
  for i, u in enumerate(draws):
    out[i] = token
    token = int(np.searchsorted(cdf[token], u, side="right"))
  return out


def tiny_text() -> np.ndarray:
  """The `tiny_text` stream (see the module docstring)."""
  return markov_tokens(TINY_TEXT_TOKENS, TINY_TEXT_VOCAB, _TINY_TEXT_SEED)


def train_sizes(name: str) -> tuple[int, int]:
  """(training tokens, vocabulary size) of a data set, without reading it."""
  if name == "tiny_text":
    return TINY_TEXT_TOKENS, TINY_TEXT_VOCAB
  if name == "pydoc_topics":
    return len(pydoc_text.load_split("train")), pydoc_text.VOCAB_SIZE
  if name == "wikitext103":
    from invmeasure.data import wikitext103
    return wikitext103.NUM_TRAIN_TOKENS, wikitext103.VOCAB_SIZE
  raise ConfigError(f"config.dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")


def load_stream(name: str, split: str, data_dir: str | None = None
                ) -> tuple[lm.TokenStream, int]:
  """The named data set's split as a token stream, and its vocabulary size."""
  if name == "tiny_text":
    if split != "train":
      raise ConfigError(f"tiny_text has only a 'train' split, not {split!r}")
    return lm.TokenStream.from_array(tiny_text()), TINY_TEXT_VOCAB
  if name == "pydoc_topics":
    return lm.TokenStream.from_array(pydoc_text.load_split(split)), pydoc_text.VOCAB_SIZE
  if name == "wikitext103":
    from invmeasure.data import wikitext103
    stream = lm.TokenStream.from_tfds(split, data_dir)  # ConfigError when not prepared
    return stream, int(wikitext103.Wikitext103(data_dir=data_dir).info.metadata["vocab_size"])
  raise ConfigError(f"config.dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
