"""Fair tuning: per method configuration and task, pick the training hyperparameter value that
scores best on the validation stream, and report the test score of the runs made at that value.

Comparing methods at one learning rate favours whichever method that rate suits. The validation
batches come from their own seeded stream (split "validation"), independent of the test batches
the table reports, so the choice does not peek at the test score.

Selection works on records alone: runs that differ only in a tunable option (and the seed) are
alternatives of one row; the value with the best mean validation score over its finished seeds
wins (ties: the first in sorted order), and its records carry `tuned = "lr=0.001"`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pandas as pd

from .config import ConfigError, grid_values, parse_float, parse_int, parse_spec, unknown
from .runner import OPTIMIZERS, RunConfig


def _positive_float(key, text):
    value = parse_float(text)
    if not value > 0:
        raise ValueError
    return value


def _clip(key, text):
    value = parse_float(text)
    if value < 0:
        raise ValueError
    return value or None  # 0 means no clipping, as for --clip


def _positive_int(key, text):
    value = parse_int(text)
    if value <= 0:
        raise ValueError
    return value


def _optimizer(key, text):
    if text not in OPTIMIZERS:
        raise unknown("optimizer", text, list(OPTIMIZERS))
    return text


# training options that can be tuned: RunConfig fields that are not columns of the table's rows
TUNABLE = {"lr": (_positive_float, "a positive number"), "clip": (_clip, "a number >= 0"),
           "optimizer": (_optimizer, "one of " + ", ".join(sorted(OPTIMIZERS))),
           "batch": (_positive_int, "a positive integer")}


def parse_tune(text: str) -> dict[str, list]:
    """'lr=[1e-4,3e-4],clip=[0.5,1]' -> {'lr': [1e-4, 3e-4], 'clip': [0.5, 1.0]}."""
    spec = parse_spec(f"--tune[{text}]")
    if not spec.params:
        raise ConfigError(f"--tune {text!r}: expected key=[v1,v2,...]")
    grid = {}
    for key, value in spec.params.items():
        if key not in TUNABLE:
            raise unknown("option for --tune", key, list(TUNABLE))
        convert, allowed = TUNABLE[key]
        values = []
        for item in grid_values("--tune", key, value):
            try:
                values.append(convert(key, item))
            except ConfigError:
                raise
            except ValueError:
                raise ConfigError(f"--tune: {key}={item!r} is not {allowed}") from None
        grid[key] = values
    return grid


def expand(configs: list[RunConfig], grid: dict[str, list]) -> list[RunConfig]:
    """Every configuration at every combination of the tuned values."""
    if not grid:
        return configs
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [dataclasses.replace(cfg, **combo) for cfg in configs for combo in combos]


def _row_key(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in TUNABLE and k != "seed"}, sort_keys=True,
                      default=str)


def _value_text(v) -> str:
    return "0" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def select(records: list[dict]) -> tuple[list[dict], pd.DataFrame]:
    """(records of the chosen values, annotated with `tuned`; one row per candidate value with its
    mean validation score and whether it was chosen)."""
    rows, groups = [], {}
    for r in records:
        if r:
            groups.setdefault(_row_key(r["config"]), []).append(r)
    kept = []
    for group in groups.values():
        variants = {}
        for r in group:
            variants.setdefault(tuple((k, r["config"].get(k)) for k in TUNABLE), []).append(r)
        if len(variants) == 1:
            kept.extend(group)
            continue
        varying = [k for k in TUNABLE if len({dict(v)[k] for v in variants}) > 1]
        higher = next((r.get("higher_is_better") for r in group if r.get("higher_is_better") is not None), True)
        scored = []
        for values, rs in sorted(variants.items(), key=lambda kv: [str(x) for x in kv[0]]):
            val = [r["final"].get("validation_score") for r in rs if r.get("status") == "ok"]
            val = [v for v in val if v is not None and math.isfinite(v)]
            mean = sum(val) / len(val) if val else None
            label = ",".join(f"{k}={_value_text(dict(values)[k])}" for k in varying)
            scored.append((mean, label, rs))
        finite = [s for s in scored if s[0] is not None]
        # a value where a seed diverged or failed is not chosen over one where every seed finished: its
        # mean is over the seeds that survived it
        whole = [s for s in finite if all(r.get("status") == "ok" for r in s[2])] or finite
        best = (max if higher else min)(whole, key=lambda s: s[0]) if whole else scored[0]
        first = group[0]
        for mean, label, rs in scored:
            rows.append({"method": first.get("method_label") or first["config"]["method"],
                         "task": first["config"]["task"], "seq_len": first["config"]["seq_len"],
                         "value": label, "validation_score_mean": mean,
                         "seeds": sum(r.get("status") == "ok" for r in rs), "chosen": rs is best[2]})
        for r in best[2]:
            kept.append({**r, "tuned": best[1]})
    return kept, pd.DataFrame(rows)
