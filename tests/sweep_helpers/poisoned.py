"""A test method that diverges on a chosen update: BPTT, then every weight set to NaN after update
`at`. The training loss it returns is computed before that update, so only the evaluation after it
can see the divergence (a run that diverges on its last update)."""
import torch

from harness.config import positive_int
from methods.bptt import BPTT


class Poisoned(BPTT):
    name = "poisoned"
    description = "bptt whose weights become NaN after update `at`"
    hyperparameters = {"at": positive_int(2, "the update after which every weight is NaN")}

    def validate(self):
        self.seen = 0

    def train_step(self, net, batch, updater, rng):
        self.seen += 1
        loss = super().train_step(net, batch, updater, rng)
        if self.seen == self.at:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
        return loss
