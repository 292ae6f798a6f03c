"""Task generators: shapes, masks, determinism, independence of streams, chance levels."""
import pytest
import torch

from harness.config import ConfigError
from harness.registry import TASKS
from harness.task import SCORES


@pytest.mark.parametrize("name", TASKS.names())
def test_shapes_masks_and_determinism(name, tmp_path):
    task = TASKS.get(name).example(tmp_path)
    a = next(task.stream(3, "train", 5))
    b = next(task.stream(3, "train", 5))
    L = task.num_steps
    assert a.x.shape == (L, 5, task.input_size)
    if task.loss_kind == "cross_entropy":
        assert a.y.shape == (L, 5) and a.y.dtype == torch.long
        assert 0 <= a.y.min() and a.y.max() < task.output_size
    else:
        assert a.y.shape == (L, 5, task.output_size) and a.y.is_floating_point()
    assert a.mask.shape == a.score_mask.shape == (L, 5)
    assert a.score_mask.sum() > 0 and a.mask.sum() > 0
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    test = next(task.stream(3, "test", 5))
    other = next(task.stream(4, "train", 5))
    assert not torch.equal(a.x, test.x) and not torch.equal(a.x, other.x)
    assert 0 < task.chance
    assert task.metric in SCORES and task.higher_is_better == SCORES[task.metric]
    assert a.score_kind == task.metric


def test_copy_layout():
    task = TASKS.get("copy")(7)
    batch = next(task.stream(0, "train", 4))
    ids = batch.x.argmax(-1)
    assert task.num_steps == 27
    assert ((ids[:10] >= 1) & (ids[:10] <= 8)).all()
    assert (ids[10:16] == 0).all() and (ids[16] == 9).all() and (ids[17:] == 0).all()
    assert torch.equal(batch.y[-10:], ids[:10]) and (batch.y[:-10] == 0).all()
    assert (batch.mask == 1).all() and batch.score_mask[-10:].all() and batch.score_mask[:-10].sum() == 0
    assert task.chance == 1 / 8
    scalar = TASKS.get("copy")(7, encoding="scalar", loss_on="targets")
    sb = next(scalar.stream(0, "train", 4))
    assert sb.x.shape[-1] == 1 and torch.equal(sb.x[..., 0].long(), ids)
    assert torch.equal(sb.mask, sb.score_mask)


def test_copy_chance_by_guessing():
    task = TASKS.get("copy")(5)
    batch = next(task.stream(0, "train", 4000))
    guess = torch.nn.functional.one_hot(torch.randint(1, 9, batch.y.shape, generator=torch.Generator().manual_seed(0)), 10)
    score, count = batch.score_sums(guess.float())
    assert score / count == pytest.approx(task.chance, abs=0.01)


def test_adding_layout_and_chance():
    task = TASKS.get("adding")(20)
    batch = next(task.stream(0, "train", 20000))
    markers = batch.x[..., 1]
    assert (markers.sum(0) == 2).all()
    assert (markers[:10].sum(0) == 1).all() and (markers[10:].sum(0) == 1).all()
    target = (batch.x[..., 0] * markers).sum(0)
    assert torch.allclose(batch.y[-1, :, 0], target)
    assert batch.mask[:-1].sum() == 0 and (batch.mask[-1] == 1).all()
    mean = torch.ones_like(batch.y)
    score, count = batch.score_sums(mean)
    assert score / count == pytest.approx(task.chance, rel=0.03)


@pytest.mark.parametrize("name", TASKS.names())
def test_bad_sequence_length(name):
    with pytest.raises(ConfigError):
        TASKS.get(name)(0)


# --- denoise --------------------------------------------------------------------------------------

def test_denoise_layout_positions_vary_and_chance():
    task = TASKS.get("denoise")(12, n=4, symbols=6)
    batch = next(task.stream(0, "train", 500))
    ids = batch.x.argmax(-1)
    assert task.num_steps == 12 + 1 + 4 and batch.x.shape[-1] == 8 and task.output_size == 7
    data = ids[:12]
    assert ((data > 0).sum(0) == 4).all() and (data <= 6).all()
    assert (ids[12] == 7).all() and (ids[13:] == 0).all()
    for lane in range(20):  # the targets are the symbols in their order of appearance
        assert torch.equal(batch.y[13:, lane], data[:, lane][data[:, lane] > 0])
    first = (data > 0).float().argmax(0)
    assert len(first.unique()) > 3, "positions must vary between sequences"
    assert (batch.y[:13] == 0).all()
    assert torch.equal(batch.mask, batch.score_mask) and batch.mask[13:].all() and batch.mask[:13].sum() == 0
    assert (next(TASKS.get("denoise")(12, n=4, loss_on="all").stream(0, "train", 2)).mask == 1).all()
    guess = torch.nn.functional.one_hot(torch.randint(1, 7, batch.y.shape, generator=torch.Generator().manual_seed(0)), 7)
    score, count = batch.score_sums(guess.float())
    assert score / count == pytest.approx(task.chance, abs=0.02)
    with pytest.raises(ConfigError, match="n=5 symbols do not fit"):
        TASKS.get("denoise")(4, n=5)


# --- temporal order -------------------------------------------------------------------------------

def test_temporal_order_layout_and_chance():
    task = TASKS.get("temporal_order")(100)
    assert task.windows() == ((10, 20), (50, 60))   # the paper's ranges at T=100
    batch = next(task.stream(0, "train", 4000))
    ids = batch.x.argmax(-1)
    assert (ids[0] == 6).all() and (ids[-1] == 7).all()
    relevant = (ids == 4) | (ids == 5)
    assert (relevant.sum(0) == 2).all()
    assert (relevant[10:21].sum(0) == 1).all() and (relevant[50:61].sum(0) == 1).all()
    pair = ids.T[relevant.T].view(-1, 2) - 4   # per sequence, in time order: 0 for X, 1 for Y
    assert torch.equal(batch.y[-1], 2 * pair[:, 0] + pair[:, 1])
    assert batch.mask[:-1].sum() == 0 and (batch.mask[-1] == 1).all()
    assert torch.bincount(batch.y[-1], minlength=4).min() > 900   # the 4 classes are balanced
    guess = torch.nn.functional.one_hot(torch.randint(0, 4, batch.y.shape, generator=torch.Generator().manual_seed(0)), 4)
    score, count = batch.score_sums(guess.float())
    assert score / count == pytest.approx(task.chance, abs=0.02)
    for T in (4, 5, 9, 30):   # the windows stay inside the sequence and in order at short T
        (lo1, hi1), (lo2, hi2) = TASKS.get("temporal_order")(T).windows()
        assert 1 <= lo1 <= hi1 < lo2 <= hi2 <= T - 2
    with pytest.raises(ConfigError):
        TASKS.get("temporal_order")(3)


# --- digits ---------------------------------------------------------------------------------------

def test_digits_split_is_fixed_and_disjoint():
    from sklearn.datasets import load_digits
    task = TASKS.get("seq_digits")(64)
    full = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    assert len(task.train_x) == 1437 and len(task.test_x) == 360
    rows = lambda images: sorted(tuple(r.tolist()) for r in images)
    # the two parts together are the data set with each image once: disjoint, nothing left out
    assert rows(torch.cat([task.train_x, task.test_x])) == rows(full)
    assert torch.equal(task.test_x, TASKS.get("seq_digits")(64).test_x)   # fixed
    assert torch.equal(TASKS.get("perm_digits")(64).test_y, task.test_y)


def test_digits_layout_stretch_and_chance():
    task = TASKS.get("seq_digits")(128, stretch=2)
    batch = next(task.stream(0, "test", 360))
    assert batch.x.shape == (128, 360, 1) and task.repeat == 2
    assert torch.equal(batch.x[0::2], batch.x[1::2])          # each pixel twice
    images = batch.x[0::2, :, 0].T
    rows = {tuple(r.tolist()): int(y) for r, y in zip(task.test_x, task.test_y)}
    assert all(rows[tuple(r.tolist())] == int(y) for r, y in zip(images, batch.y[-1]))
    assert sorted(batch.y[-1].tolist()) == sorted(task.test_y.tolist())   # one epoch: every test image once
    assert batch.mask[:-1].sum() == 0 and (batch.mask[-1] == 1).all()
    big = next(task.stream(1, "train", 4000))
    guess = torch.nn.functional.one_hot(torch.randint(0, 10, big.y.shape, generator=torch.Generator().manual_seed(0)), 10)
    score, count = big.score_sums(guess.float())
    assert score / count == pytest.approx(task.chance, abs=0.02)
    with pytest.raises(ConfigError, match="multiple of the 64 pixels"):
        TASKS.get("seq_digits")(100)
    with pytest.raises(ConfigError, match="stretch=3 needs --seq-len 192"):
        TASKS.get("seq_digits")(64, stretch=3)


def test_permutation_is_fixed_by_its_seed():
    plain = TASKS.get("seq_digits")(64)
    perm = TASKS.get("perm_digits")(64)
    again = TASKS.get("perm_digits")(64, perm_seed=0)
    other = TASKS.get("perm_digits")(64, perm_seed=1)
    assert sorted(perm.order.tolist()) == list(range(64)) and not torch.equal(perm.order, torch.arange(64))
    assert torch.equal(perm.order, again.order) and not torch.equal(perm.order, other.order)
    a, p = next(plain.stream(5, "train", 8)), next(perm.stream(5, "train", 8))
    assert torch.equal(p.x[:, :, 0], a.x[perm.order, :, 0]) and torch.equal(a.y, p.y)
    q = next(perm.stream(6, "train", 8))   # another run seed: other images, the same permutation
    images = {tuple(r.tolist()) for r in perm.train_x}
    assert all(tuple(col.tolist()) in images for col in q.x[:, :, 0].T[:, perm.order.argsort()])


# --- MNIST from IDX files --------------------------------------------------------------------------

def write_mnist(folder, n_train=30, n_test=10, side=3, gz=True, seed=0):
    import numpy as np
    from tasks.mnist import write_idx
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, side, side)), rng.integers(0, 10, n)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
        data[part] = (images, labels)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz):
    data = write_mnist(tmp_path / "m", gz=gz)
    task = TASKS.get("seq_mnist")(18, data_dir=str(tmp_path / "m"))
    assert task.pixels == 9 and task.repeat == 2
    assert torch.allclose(task.train_x, torch.tensor(data["train"][0].reshape(30, 9) / 255.0, dtype=torch.float32))
    assert torch.equal(task.test_y, torch.tensor(data["t10k"][1]))
    batch = next(task.stream(0, "test", 10))
    assert sorted(batch.y[-1].tolist()) == sorted(data["t10k"][1].tolist())
    perm = TASKS.get("perm_mnist")(9, data_dir=str(tmp_path / "m"), perm_seed=3)
    assert torch.equal(perm.order, torch.randperm(9, generator=torch.Generator().manual_seed(3)))


def _corrupt(folder, how):
    import gzip
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "not gzip":
        path.write_bytes(raw)
    elif how == "magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + raw[4:]))
    elif how == "truncated":
        path.write_bytes(gzip.compress(raw[:-5]))
    elif how == "count":
        from tasks.mnist import write_idx
        import numpy as np
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7))
    elif how == "label":
        from tasks.mnist import write_idx
        import numpy as np
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(30, 12))


CORRUPTIONS = {"missing": "not found", "not gzip": "cannot read MNIST file", "magic": "is not an IDX file",
               "truncated": "holds 265 bytes of data", "count": "holds 30 images but", "label": "holds label 12"}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_mnist_bad_files_are_one_line_errors(tmp_path, how):
    write_mnist(tmp_path / "m")
    _corrupt(tmp_path / "m", how)
    with pytest.raises(ConfigError, match=CORRUPTIONS[how]) as info:
        TASKS.get("seq_mnist")(9, data_dir=str(tmp_path / "m"))
    assert "\n" not in str(info.value)


def test_mnist_needs_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="give --data-dir"):
        TASKS.get("seq_mnist")(784)
    with pytest.raises(ConfigError, match="does not exist"):
        TASKS.get("perm_mnist")(784, data_dir=str(tmp_path / "nowhere"))


# --- charlm ---------------------------------------------------------------------------------------

def test_charlm_split_vocabulary_and_chance(tmp_path):
    import math
    text = "".join(chr(ord("a") + (i * 7) % 13) for i in range(2000)) + "XYZ" * 50
    path = tmp_path / "t.txt"
    path.write_text(text)
    task = TASKS.get("charlm")(10, data_file=str(path), test_fraction=0.1)
    assert task.vocab == "".join(sorted(set(text))) and task.input_size == task.output_size == 16
    assert task.chance == math.log2(16)
    decode = lambda ids: "".join(task.vocab[i] for i in ids)
    train_text, test_text = text[:1935], text[1935:]
    assert decode(task.train_ids) == train_text and decode(task.test_ids) == test_text
    for split, part in (("test", test_text), ("train", train_text), ("fidelity", train_text)):
        batch = next(task.stream(0, split, 50))
        assert batch.x.shape == (10, 50, 16) and batch.y.shape == (10, 50) and (batch.mask == 1).all()
        for lane in range(50):
            inputs = decode(batch.x[:, lane].argmax(-1))
            assert inputs + task.vocab[batch.y[-1, lane]] in part
            assert inputs[1:] == decode(batch.y[:-1, lane])     # the target is the next character
    assert "X" in decode(next(task.stream(0, "test", 50)).y.flatten())
    # bits per character: the uniform prediction scores log2 V; a perfect one close to 0
    batch = next(task.stream(0, "test", 8))
    score, count = batch.score_sums(torch.zeros(10, 8, 16))
    assert score / count == pytest.approx(math.log2(16), rel=1e-6)
    sure = torch.nn.functional.one_hot(batch.y, 16).float() * 50
    score, count = batch.score_sums(sure)
    assert score / count < 1e-6 and not task.higher_is_better
    assert 0 < task.unigram_bits < task.chance


def test_charlm_default_corpus():
    task = TASKS.get("charlm")(50)
    assert len(task.train_ids) + len(task.test_ids) > 500_000 and len(task.vocab) < 128
    assert 4 < task.unigram_bits < task.chance


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"\xff\xfeab", "is not UTF-8 text"),
                                             (b"aaaa", "1 distinct characters"), (b"abcabc", "too short for T=10")])
def test_charlm_bad_files(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        TASKS.get("charlm")(10, data_file=str(path))
    assert "\n" not in str(info.value)


# --- mimic ----------------------------------------------------------------------------------------

def test_mimic_chance_teacher_and_time_constant():
    task = TASKS.get("mimic")(40)
    batch = next(task.stream(0, "test", 3000))
    assert task.num_steps == 30 + 40 and batch.y.shape == (70, 3000, 2) and task.metric == "nmse"
    assert batch.mask[:30].sum() == 0 and (batch.mask[30:] == 1).all()   # scored after the washout
    score, count = batch.score_sums(torch.zeros_like(batch.y))     # predicting the mean
    assert score / count == pytest.approx(task.chance, abs=0.04)
    again = TASKS.get("mimic")(40)
    assert torch.equal(task.W, again.W) and torch.equal(task.V, again.V)   # fixed by teacher_seed, not the run seed
    assert not torch.equal(task.W, TASKS.get("mimic")(40, teacher_seed=1).W)
    assert torch.equal(TASKS.get("mimic")(200).scale, task.scale)   # the same targets at every horizon
    assert TASKS.get("mimic")(5, washout=0).num_steps == 5
    x = next(task.stream(1, "train", 3)).x
    assert torch.allclose(next(task.stream(1, "train", 3)).y, task.teacher(x))

    def influence(tau, lag):  # |d y_T / d x_{T-lag}|, averaged over sequences
        t = TASKS.get("mimic")(41, tau=tau)
        x = torch.randn(41, 64, t.inputs, generator=torch.Generator().manual_seed(0), requires_grad=True)
        t.teacher(x)[-1].sum().backward()
        return x.grad[-1 - lag].norm() / x.grad[-1].norm()
    assert influence(10.0, 30) > 20 * influence(2.0, 30)   # a longer time constant: longer dependencies


def test_bits_score_kind():
    import math
    from harness.task import Batch
    y = torch.tensor([[0, 1], [2, 1]])
    out = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0))
    batch = Batch(torch.zeros(2, 2, 1), y, torch.ones(2, 2), torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "cross_entropy", "bits")
    score, count = batch.score_sums(out)
    expected = -sum(torch.log_softmax(out[t, b], -1)[y[t, b]] for t, b in ((0, 0), (1, 0), (1, 1))) / math.log(2)
    assert count == 3 and score == pytest.approx(float(expected), rel=1e-6)
    assert Batch(torch.zeros(1, 1, 1), y[:1, :1], torch.ones(1, 1), torch.ones(1, 1), "mse").score_kind == "mse"


# --- data files through the command line ----------------------------------------------------------

def _cli(tmp_path, capsys, *args):
    from harness.cli import main
    out = tmp_path / "out"
    code = main(["--methods", "bptt", "--steps", "2", "--seeds", "1", "--hidden", "3", "--batch", "2",
                 "--eval-batches", "1", "--quiet", "--out", str(out), *args])
    captured = capsys.readouterr()
    trained = (out / "runs").exists() and list((out / "runs").glob("*.json"))
    return code, captured.err.strip(), captured.out, trained


@pytest.mark.parametrize("args,message", [
    (["--tasks", "seq_mnist"], "give --data-dir"),
    (["--tasks", "perm_mnist", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["--tasks", "seq_mnist", "--data-dir", "{tmp}/m", "--seq-len", "9"], "is not an IDX file"),
    (["--tasks", "charlm", "--data-file", "{tmp}/missing.txt"], "does not exist"),
    (["--tasks", "charlm", "--data-file", "{tmp}/bad.txt"], "is not UTF-8 text"),
    (["--tasks", "copy", "--data-file", "{tmp}/bad.txt"], "--data-file is given but none of the tasks (copy)"),
    (["--tasks", "charlm", "--data-dir", "{tmp}/m"], "--data-dir is given but none of the tasks (charlm)"),
])
def test_bad_data_through_the_command_line(tmp_path, capsys, args, message):
    write_mnist(tmp_path / "m")
    _corrupt(tmp_path / "m", "magic")
    (tmp_path / "bad.txt").write_bytes(b"ab\xffcd" * 100)
    code, err, _, trained = _cli(tmp_path, capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not trained


def test_data_options_reach_the_tasks_that_take_them(tmp_path, capsys):
    import json
    write_mnist(tmp_path / "m", side=2)
    (tmp_path / "t.txt").write_text("hello world, " * 40)
    code, err, printed, _ = _cli(tmp_path, capsys, "--tasks", "seq_mnist,charlm,copy", "--seq-len", "4",
                                 "--data-dir", str(tmp_path / "m"), "--data-file", str(tmp_path / "t.txt"))
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    params = {r["config"]["task"]: r["config"]["task_params"] for r in records}
    assert params["seq_mnist"] == {"data_dir": str((tmp_path / "m").resolve())}
    assert params["charlm"] == {"data_file": str((tmp_path / "t.txt").resolve())} and params["copy"] == {}
    assert all(r["status"] == "ok" for r in records)
    assert {r["metric"] for r in records} == {"accuracy", "bits"}
    assert "(bits)" in printed and "(accuracy)" in printed
