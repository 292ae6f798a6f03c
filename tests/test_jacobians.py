"""The cells' pre-activation forms and one-step derivatives (harness/jacobians.py), against the cells
themselves and against forward-mode AD, in float64."""
import pytest
import torch

from harness.jacobians import lane_jacobians, preactivations, step_function, unit_jacobians
from harness.models import CELLS, build_network

B, INPUT, H = 3, 2, 4


def cell_and_state(kind, seed=0):
    torch.manual_seed(seed)
    cell = build_network(kind, INPUT, H, 2).double().cell
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, INPUT, generator=g, dtype=torch.float64)
    state = tuple(torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5 for _ in cell.state_names)
    return cell, x, state


@pytest.mark.parametrize("kind", list(CELLS))
def test_step_from_preactivations_equals_the_cell(kind):
    cell, x, state = cell_and_state(kind)
    with torch.no_grad():
        ours = step_function(cell)(*preactivations(cell, x, state[0]), state)
        theirs = cell(x, state)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", list(CELLS))
def test_unit_jacobians_are_the_diagonal_blocks_of_the_full_ones(kind):
    """Closed forms against jvp; and every cell is unit-wise: nothing outside the blocks."""
    cell, x, state = cell_and_state(kind)
    gi, gh = preactivations(cell, x, state[0])
    Di, Dh, Ds = lane_jacobians(cell, gi, gh, state)          # [B, S, G], [B, S, G], [B, S, S]
    units = unit_jacobians(cell, gi, gh, state)
    n, G = len(state), gi.shape[1]
    unit_of_row = torch.arange(G) % H
    for s in range(n):
        rows = torch.arange(H) + s * H                          # state component s of every unit
        for full, closed in ((Di, units.Ci[s]), (Dh, units.Ch[s])):
            block = full[:, rows][:, unit_of_row, torch.arange(G)]          # d s'_k / d pre_g, k = unit of g
            assert torch.allclose(block, closed, rtol=0, atol=1e-14)
            off = full[:, rows].clone()
            off[:, unit_of_row, torch.arange(G)] = 0
            assert off.abs().max() == 0
        for r in range(n):
            cols = torch.arange(H) + r * H
            sub = Ds[:, rows][:, :, cols]
            diag = torch.diagonal(sub, dim1=1, dim2=2)
            expected = units.Ds[s][r]
            if expected is None:
                assert sub.abs().max() == 0
            else:
                assert torch.allclose(diag, torch.as_tensor(expected, dtype=diag.dtype).expand_as(diag),
                                      rtol=0, atol=1e-14)
                assert (sub - torch.diag_embed(diag)).abs().max() == 0
