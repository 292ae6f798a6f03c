"""benchmarks/sab_vs_bptt.py's comparison as parametrised benchmarks: bptt on the plain LSTM,
sab_bptt (full BPTT through the SAB network) and sab, copy at T = 100 and 1000 (L = T + 20), LSTM
128, batch 32, k_trunc = 10, k_top = 5, k_att = 10 (one of that script's settings; it also times k_att = 2
and both scorers), sab's default scorer, one thread. Rounds are
paired with a bptt step, as in test_methods.py."""
import pytest

from bench import prepare, prepare_or_skip, run_against

ATT = {"k_top": 5, "k_att": 10}
RUNS = {"bptt": {}, "sab_bptt": ATT, "sab": {"k_trunc": 10, **ATT}}
CASES = [(T, n) for T in (100, 1000) for n in RUNS]


@pytest.mark.parametrize("T,name", CASES, ids=[f"T{T}-{n}" for T, n in CASES])
def test_sab_vs_bptt(benchmark, T, name):
    benchmark.group = f"sab_vs_bptt T{T}"
    prepared = prepare_or_skip(name, RUNS[name], "copy", T, "lstm", 128, 32)
    baseline = None if name == "bptt" else prepare("bptt", {}, "copy", T, "lstm", 128, 32)
    run_against(benchmark, prepared, baseline, "sab_vs_bptt", rounds=5 if T <= 100 else 3)
