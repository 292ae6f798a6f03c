"""The issue-19 targets, each timed paired with its baseline (one baseline step before every timed
round, so a shared machine's load falls on both alike): LSTM, hidden 128, batch 32, one thread.

- ckpt_bptt against bptt at L = 1000 (copy T = 980): time within 1.5x, saved plus state bytes within 0.25x;
- dni against tbptt at the same k (10), L = 100 (copy T = 80): time within 1.5x.

Beside them, without a target: ckpt_bptt[memory=32] (Gruslys et al.'s schedule, at most 32 carries
stored) against bptt at L = 1000.
"""
import pytest

from bench import prepare, run_paired

PAIRS = [("ckpt_bptt", {}, "bptt", 980, 3), ("dni", {}, "tbptt", 80, 5),
         ("ckpt_bptt", {"memory": 32}, "bptt", 980, 3)]
IDS = [f"{n}{''.join(f'-{k}{v}' for k, v in p.items())}-vs-{b}-T{T}" for n, p, b, T, _ in PAIRS]


@pytest.mark.parametrize("name,params,baseline,T,rounds", PAIRS, ids=IDS)
def test_target(benchmark, name, params, baseline, T, rounds):
    benchmark.group = f"targets {name} vs {baseline}"
    base = prepare(baseline, {}, "copy", T, "lstm", 128, 32)
    own = prepare(name, params, "copy", T, "lstm", 128, 32)
    run_paired(benchmark, own, base, "targets", rounds=rounds)
