"""Copy task in the layout of the SAB release (Ke et al. 2018; after Hochreiter and Schmidhuber
1997 and Arjovsky et al. 2016).

Sequence of L = T + 20 steps: 10 symbols drawn uniformly from {1..8}, T-1 blanks (0), a marker (9),
then 10 blanks. The target is blank everywhere except the last 10 positions, which hold the 10
symbols. The score is the accuracy on those last 10 positions; guessing gives 1/8.

As in the release, the loss counts at every position by default (`loss_on=all`); `loss_on=targets`
counts only the last 10. Inputs are one-hot over the 10 ids (`encoding=onehot`); the release fed
the id itself as one scalar (`encoding=scalar`).
"""
import torch
import torch.nn.functional as F

from harness.config import Param
from harness.task import Task

N_COPY, N_SYMBOLS, MARKER = 10, 8, 9


class Copy(Task):
    name = "copy"
    description = "recall 10 symbols after T steps (SAB release layout, L = T + 20)"
    reference = "Hochreiter and Schmidhuber 1997; Arjovsky et al. 2016; Ke et al. 2018 (SAB)"
    loss_kind = "cross_entropy"
    solved_threshold = 0.99   # accuracy on the 10 recalled symbols
    default_seq_len = 5   # the recall lags the symbols by T + 10 steps: beyond tbptt's default k=10
    hyperparameters = {
        "encoding": Param("onehot", str, "input coding of the symbol ids", choices=("onehot", "scalar")),
        "loss_on": Param("all", str, "positions where the loss counts", choices=("all", "targets")),
    }
    output_size = 10

    @property
    def input_size(self):
        return 10 if self.encoding == "onehot" else 1

    @property
    def num_steps(self):
        return self.seq_len + 2 * N_COPY

    @property
    def lag(self):
        # symbol i, read at step i, is recalled at step T + 10 + i
        return self.seq_len + N_COPY

    @property
    def chance(self):
        return 1.0 / N_SYMBOLS

    def generate(self, batch_size, gen):
        T, B, L = self.seq_len, batch_size, self.num_steps
        symbols = torch.randint(1, N_SYMBOLS + 1, (N_COPY, B), generator=gen)
        ids = torch.zeros(L, B, dtype=torch.long)
        ids[:N_COPY] = symbols
        ids[N_COPY + T - 1] = MARKER
        y = torch.zeros(L, B, dtype=torch.long)
        y[-N_COPY:] = symbols
        x = F.one_hot(ids, 10).float() if self.encoding == "onehot" else ids.float().unsqueeze(-1)
        targets = torch.zeros(L, B)
        targets[-N_COPY:] = 1.0
        mask = torch.ones(L, B) if self.loss_on == "all" else targets
        return self.batch(L, B, x, y, mask, targets)
