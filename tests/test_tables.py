"""The comparison table from constructed records: verdicts, what is shown with few seeds, number
formats that tabulate must not re-parse, a footnote for the columns shown only, and a palette that
gives a method the same colour in every report."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import palette, summary

ROOT = Path(__file__).resolve().parents[1]


def fake(method: str, score: float, seed: int, task: str = "copy", metric: str = "accuracy", T: int = 5,
         ms: float = 10.0, state: int = 0, **extra) -> dict:
    """A finished run record with only what the table reads."""
    higher = metric == "accuracy"
    name = method.split("[", 1)[0]
    params = dict(p.split("=") for p in method[len(name):].strip("[]").split(",") if p)
    return {"config": {"method": name, "method_params": params, "task": task, "task_params": {}, "seq_len": T,
                       "eval_seq_len": None, "cell": "lstm", "hidden": 8, "seed": seed, "threads": 1, "device": "cpu",
                       "batch": 4, "steps": 5},
            "method_label": method, "status": "ok", "n_params": 100, "metric": metric, "higher_is_better": higher,
            "chance": 0.125 if higher else 1 / 6, "solved_threshold": 0.99 if higher else 0.01,
            "num_steps": T + 20, "eval_num_steps": T + 20, "lag": T + 10, "gradient_kind": "approximate",
            "final": {"score": score, "test_loss": 0.1},
            "curve": [{"step": 0, "sequences": 0, "updates": 0, "wall_s": 0.0, "score": 0.1, "test_loss": 1.0},
                      {"step": 5, "sequences": 20, "updates": 5, "wall_s": 1.0, "score": score, "test_loss": 0.1}],
            "time": {"ms_per_step": ms, "ms_per_update": ms, "updates_per_step": 1},
            "memory": {"saved_bytes": 3 * 1024 ** 2, "state_bytes": state}, "fidelity": [], **extra}


def table(records):
    return summary.summarise(records)


def row(df, method):
    label = df["method"] + df["params"].fillna("").map(lambda p: f"[{p}]" if p else "")
    return df[label == method].iloc[0]


def test_three_methods_all_at_one_none_is_best():
    df = table([fake(m, 1.0, s) for m in ("bptt", "sab", "tbptt[k=2]") for s in range(3)])
    assert set(df["verdict"]) == {"tied"}
    shown = summary.display(df)
    assert (shown["verdict"].str.startswith("tied")).all() and "best" not in " ".join(shown["verdict"])


def test_a_clearly_better_method_is_best_and_the_rest_worse():
    scores = {"bptt": [0.98, 0.99, 1.0], "tbptt[k=2]": [0.12, 0.13, 0.125], "sab": [0.5, 0.52, 0.55]}
    df = table([fake(m, v, s) for m, vs in scores.items() for s, v in enumerate(vs)])
    assert row(df, "bptt")["verdict"] == "best"
    assert row(df, "sab")["verdict"] == "worse" and row(df, "tbptt[k=2]")["verdict"] == "worse"
    assert row(df, "sab")["p_holm"] >= row(df, "sab")["p_vs_top"]
    # a different task is a different group: its rows are not compared with these
    df = table([fake(m, v, s) for m, vs in scores.items() for s, v in enumerate(vs)]
               + [fake("rtrl", 0.3, s, task="denoise") for s in range(3)])
    assert row(df, "rtrl")["verdict"] == "no test" and "no other method" in row(df, "rtrl")["no_test_reason"]


def test_fewer_than_three_seeds_show_the_seeds_not_an_interval():
    df = table([fake("bptt", v, s) for s, v in enumerate([0.2, 0.9])] + [fake("sab", 0.4, 0)])
    assert df["score_ci_low"].isna().all()
    shown = summary.display(df).set_index("method")
    assert shown.loc["bptt", "score"] == "0.550 (seeds: 0.200, 0.900) (accuracy)"
    assert shown.loc["sab", "score"] == "0.400 (1 seed) (accuracy)"
    assert set(shown["verdict"]) == {"no test"}
    assert "fewer than 3 seeds (2 rows)" in summary.footnote(df)


def test_intervals_of_accuracy_and_mse_stay_in_range():
    acc = table([fake("bptt", v, s) for s, v in enumerate([1.0, 1.0, 0.2])])
    assert (acc["score_ci_low"].iloc[0], acc["score_ci_high"].iloc[0]) == (0.0, 1.0)
    mse = table([fake("bptt", v, s, task="adding", metric="mse") for s, v in enumerate([0.001, 0.002, 0.3])])
    assert mse["score_ci_low"].iloc[0] == 0.0 and mse["score_ci_high"].iloc[0] > 0.3


def test_numbers_are_written_as_formatted():
    """tabulate's numparse turns "1.000" into "1" beside "0.874" and "227.0" into "227" beside "170.5"."""
    records = [fake("bptt", 1.0, s, ms=227.0) for s in range(3)] + \
              [fake("sab", v, s, ms=170.5) for s, v in enumerate([0.874, 0.874, 0.874])]
    df = table(records)
    md = summary.table_text(summary.display(df))
    assert "1.000 [1.000, 1.000]" in md and "0.874 [0.874, 0.874]" in md
    assert "| 227 " in md and "| 170 " in md          # three significant digits, as written
    assert "| 5 " in md and "| 25 " in md and "| 15 " in md   # T, L, lag as integers, not 5.0
    tex = summary.table_text(summary.display(df), "latex_booktabs")
    assert "1.000" in tex


def test_units_and_spread_in_headers_and_cells():
    records = [fake("bptt", 0.5, s, ms=ms, state=2048) for s, ms in enumerate([9.0, 10.0, 12.5])]
    shown = summary.display(table(records))
    assert {"ms/step", "saved (MiB)", "state (KiB)", "L", "lag (steps)", "solved [95% CI]"} <= set(shown.columns)
    cell = shown.iloc[0]
    assert cell["ms/step"] == "10.0 (9.00–12.5)"       # median (min–max over seeds)
    assert cell["saved (MiB)"] == "3.00" and cell["state (KiB)"] == "2.00"
    assert cell["solved [95% CI]"] == "0/3 [0.000, 0.708]"


def test_footnote_explains_only_the_columns_shown():
    df = table([fake("bptt", 0.5, s) for s in range(3)])
    shown = summary.display(df)
    note = summary.footnote(df)
    assert "cos" not in shown.columns and "cos rec" not in note and "rel bias" not in note
    assert "fidelity" not in note
    assert "ms/step" in note and "Clopper-Pearson" in note and "lag" in note
    with_fid = [fake("bptt", 0.5, s, fidelity=[{"step": 5, "cosine": 1.0, "cosine_recurrent": 1.0, "rel_error": 0.0}])
                for s in range(3)]
    note = summary.footnote(table(with_fid))
    assert "cos rec" in note and "own parameters" in note


def test_fidelity_reference_named_when_present():
    df = table([fake("sab", 0.5, s) for s in range(3)])
    df["reference"] = "sab_bptt"
    df["grad_cosine_recurrent"] = 0.8
    shown = summary.display(df)
    assert shown["fid. ref"].iloc[0] == "sab_bptt"
    assert "reference trajectory named in 'fid. ref'" in summary.footnote(df)


def test_per_seed_table_has_units_and_keeps_number_formats():
    records = [fake("bptt", 1.0, 0), fake("bptt", 0.5, 1)]
    text = summary.per_seed_markdown(summary.per_seed(records))
    assert "best at (seqs)" in text and "peak loss at (seqs)" in text
    assert "| 1.000 " in text and "| 0.500 " in text


def test_palette_fixed_per_name_and_variants_share_the_colour():
    one = palette.styles(["sab", "bptt"])
    two = palette.styles(["tbptt[k=5]", "uoro", "sab", "tbptt[k=5,update=sequence]", "tbptt"])
    assert one["sab"]["color"] == two["sab"]["color"] == palette.KNOWN["sab"][0]
    assert len({s["color"] for s in two.values()}) == 3
    variants = [two[lab] for lab in ("tbptt", "tbptt[k=5]", "tbptt[k=5,update=sequence]")]
    assert len({v["color"] for v in variants}) == 1
    assert len({str(v["linestyle"]) for v in variants}) == 3 and len({v["marker"] for v in variants}) == 3
    assert variants[0]["linestyle"] == "-" and variants[0]["marker"] == palette.KNOWN["tbptt"][1]
    # colour-blind-safe known colours are all different
    assert len({c for c, _ in palette.KNOWN.values()}) == len(palette.KNOWN)


def test_palette_of_unknown_names_is_the_same_in_another_process():
    mine = palette.colour_and_marker("my_method")
    code = "from harness import palette; print(*palette.colour_and_marker('my_method'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.split()
    assert tuple(out) == mine and mine[0] in palette.SPARE
    # two unknown names in one figure do not share a colour while one is free
    labels = [f"m{i}" for i in range(4)]
    assert len({s["color"] for s in palette.styles(labels).values()}) == 4


def _observed_lag(name, T):
    """The longest input-to-target distance in 512 sequences, found from the batch itself."""
    import torch

    from harness.registry import TASKS
    task = TASKS.get(name)(T)
    b = task.generate(512, torch.Generator().manual_seed(0))
    ids = b.x.argmax(-1)                                      # [L, B]
    targets = [t for t in range(b.num_steps) if b.score_mask[t].any()]
    if name == "copy":                                        # symbol i at step i, recalled at targets[i]
        return max(t - i for i, t in enumerate(targets))
    if name == "denoise":                                     # the j-th symbol to appear is recalled at targets[j]
        lags = []
        for lane in range(512):
            where = [s for s in range(T) if ids[s, lane] != 0]
            lags += [targets[j] - s for j, s in enumerate(where)]
        return max(lags)
    if name == "adding":                                      # the first marker, answered at the last step
        return int((b.num_steps - 1 - b.x[:, :, 1].argmax(0)).max())
    if name == "temporal_order":                              # X or Y (ids 4, 5) first seen, answered at the end
        first = ((ids == 4) | (ids == 5)).float().argmax(0)
        return int((b.num_steps - 1 - first).max())


@pytest.mark.parametrize("name,T,expected", [("copy", 100, 110), ("copy", 5, 15), ("denoise", 6, 7),
                                             ("adding", 8, 7), ("temporal_order", 30, 26)])
def test_declared_lag_matches_the_batches(name, T, expected):
    from harness.registry import TASKS
    assert TASKS.get(name)(T).lag == expected == _observed_lag(name, T)
