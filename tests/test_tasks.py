"""Task generators: shapes, masks, determinism, independence of streams, chance levels."""
import pytest
import torch

from harness.config import ConfigError
from harness.registry import TASKS


@pytest.mark.parametrize("name", TASKS.names())
def test_shapes_masks_and_determinism(name):
    task = TASKS.get(name)(12)
    a = next(task.stream(3, "train", 5))
    b = next(task.stream(3, "train", 5))
    L = task.num_steps
    assert a.x.shape == (L, 5, task.input_size)
    assert a.mask.shape == a.score_mask.shape == (L, 5)
    assert a.score_mask.sum() > 0 and a.mask.sum() > 0
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    test = next(task.stream(3, "test", 5))
    other = next(task.stream(4, "train", 5))
    assert not torch.equal(a.x, test.x) and not torch.equal(a.x, other.x)
    assert 0 < task.chance


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
