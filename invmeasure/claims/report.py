"""Claims with their numbers and verdicts, written as DIR/claims.md and DIR/claims.json."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Mapping, NamedTuple, Sequence

from invmeasure.claims import rules
from invmeasure.training import storage


class Claim(NamedTuple):
  key: str                   # unique name, e.g. 'fig1_loss_stable_gradient_not_vanishing'
  statement: str             # the paper's claim in one sentence
  evidence: str              # which runs and measurements the numbers come from
  rule: str                  # a key of `rules.RULES`
  numbers: dict[str, float]  # one seed's: what its verdict is computed from; combined: means
  figures: tuple[str, ...]   # paths relative to the report's directory
  verdict: str
  seeds: tuple[int, ...] = ()                  # combined claims: the replicates' seeds
  per_seed: tuple[dict[str, float], ...] = ()  # and each one's numbers
  seed_verdicts: tuple[str, ...] = ()          # and each one's verdict


def make_claim(key: str, statement: str, evidence: str, rule: str,
               numbers: Mapping[str, float], figures: Sequence[str] = ()) -> Claim:
  """A claim whose verdict is `rules.decide(rule, numbers)`, nothing else."""
  numbers = {name: float(value) for name, value in numbers.items()}
  return Claim(key, statement, evidence, rule, numbers, tuple(figures),
               rules.decide(rule, numbers))


def combine(seeds: Sequence[int], claims: Sequence[Claim]) -> Claim:
  """One claim from the same claim measured on each seed's runs (shown beside each
  seed's numbers). A pooled rule decides the seeds' pooled numbers
  (`rules.pooled_numbers`); any other's verdict is `rules.combine` of the seeds' verdicts
  and its numbers their means."""
  first = claims[0]
  if any(c.key != first.key or c.rule != first.rule for c in claims):
    raise ValueError(f"combine() takes one claim measured per seed, got {[c.key for c in claims]}")
  per_seed = tuple(c.numbers for c in claims)
  verdicts = tuple(c.verdict for c in claims)
  if rules.RULES[first.rule].pooled is not None:
    numbers = rules.pooled_numbers(first.rule, per_seed)
    verdict = rules.decide(first.rule, numbers)
  else:
    numbers = {name: sum(n.get(name, math.nan) for n in per_seed) / len(per_seed)
               for name in first.numbers}
    verdict = rules.combine(verdicts)
  return first._replace(numbers=numbers, seeds=tuple(seeds), per_seed=per_seed,
                        seed_verdicts=verdicts, verdict=verdict)


def _format(value: float) -> str:
  if math.isinf(value) or math.isnan(value):
    return str(value)
  if value == int(value) and abs(value) < 1e6:
    return str(int(value))
  return f"{value:.4g}"


def _markdown(claims: Sequence[Claim], header: Mapping[str, str]) -> str:
  counts = {v: sum(c.verdict == v for c in claims)
            for v in (rules.HELD, rules.NOT_HELD, rules.INCONCLUSIVE)}
  lines = ["# The paper's claims, measured", ""]
  lines += [f"- {name}: {value}" for name, value in header.items()]
  lines += [f"- verdicts: {counts[rules.HELD]} held, {counts[rules.NOT_HELD]} not held, "
            f"{counts[rules.INCONCLUSIVE]} inconclusive", "",
            "Each verdict is computed from the numbers printed with it by the rule printed "
            "with it (`invmeasure/claims/rules.py`); the thresholds are constants, the same "
            "in quick and full mode.",
            "", "| # | claim | verdict |", "| --- | --- | --- |"]
  lines += [f"| {i} | {c.statement.replace('|', '/')} | **{c.verdict}** |"
            for i, c in enumerate(claims, 1)]
  for i, claim in enumerate(claims, 1):
    lines += ["", f"## {i}. {claim.statement}", "", f"Evidence: {claim.evidence}", ""]
    lines += _numbers_table(claim)
    rule = rules.RULES[claim.rule]
    lines += ["", f"Rule (`{claim.rule}`): {rule.text}", ""]
    if rule.explain is not None:
      lines += [rule.explain(claim.numbers), ""]
    if claim.seeds and rule.pooled is not None:
      lines += ["The `pooled` column is what the rule decides; each seed alone would "
                "read: " + ", ".join(f"seed {s}: {v}" for s, v in
                                     zip(claim.seeds, claim.seed_verdicts)) + ".", ""]
    elif claim.seeds:
      lines += [f"Per seed: " + ", ".join(f"seed {s}: {v}" for s, v in
                                          zip(claim.seeds, claim.seed_verdicts)) + ". "
                f"Combined: {rules.COMBINE_TEXT}", ""]
    legacy = rules.legacy_verdict(claim.rule, claim.per_seed or (claim.numbers,))
    if legacy is not None:
      lines += [f"The rule this one replaced (`{legacy[0]}`: "
                f"{rules.LEGACY_RULES[claim.rule][1].text}) reads: **{legacy[1]}**.", ""]
    lines += [f"Verdict: **{claim.verdict}**"]
    lines += [f"\n![{os.path.basename(f)}]({f})" for f in claim.figures]
  return "\n".join(lines) + "\n"


def _numbers_table(claim: Claim) -> list[str]:
  if not claim.seeds:
    return (["| number | value |", "| --- | --- |"]
            + [f"| `{name}` | {_format(value)} |" for name, value in claim.numbers.items()])
  summary = "pooled" if rules.RULES[claim.rule].pooled is not None else "mean"
  head = f"| number | {summary} | " + " | ".join(f"seed {s}" for s in claim.seeds) + " |"
  lines = [head, "| --- " * (2 + len(claim.seeds)) + "|"]
  for name, value in claim.numbers.items():
    cells = " | ".join(_format(n[name]) if name in n else "" for n in claim.per_seed)
    lines.append(f"| `{name}` | {_format(value)} | {cells} |")
  return lines


def machine() -> str:
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
         f"{platform.system()}"


def write(claims: Sequence[Claim], directory: str, header: Mapping[str, str]) -> str:
  """Writes claims.md and claims.json into `directory`; returns the markdown's path."""
  storage.write_text(os.path.join(directory, "claims.json"), json.dumps(
      {"header": dict(header), "claims": [c._asdict() for c in claims]}, indent=1))
  path = os.path.join(directory, "claims.md")
  storage.write_text(path, _markdown(claims, header))
  return path


def read(directory: str) -> list[Claim]:
  """The claims of a written report (for checking verdicts against the rules)."""
  data = json.loads(storage.path(os.path.join(directory, "claims.json")).read_text())
  return [Claim(**{**c, "figures": tuple(c["figures"]), "seeds": tuple(c.get("seeds", ())),
                  "per_seed": tuple(c.get("per_seed", ())),
                  "seed_verdicts": tuple(c.get("seed_verdicts", ()))})
          for c in data["claims"]]
