"""A test method that never updates: truncated BPTT's gradient (k=10), never applied, so its network
stays at its initialisation. At shared parameters it must measure like tbptt; at its own, like
tbptt at step 0 (tests/test_shared_fidelity.py)."""
import torch

from harness.models import run
from methods.tbptt import TBPTT


class Frozen(TBPTT):
    name = "frozen"
    description = "tbptt's gradient, never applied: the network stays at its initialisation"

    def train_step(self, net, batch, updater, rng):
        with torch.no_grad():
            out, _ = run(net, batch.x, net.init_carry(batch.batch_size))
            return float(batch.loss(out))
