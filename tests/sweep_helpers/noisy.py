"""A test method with everything a checkpoint must restore: it draws from the method's random
generator, carries state between steps (Method.state_dict), and can raise, diverge or sleep."""
import os
import signal
import time

import torch

from harness.config import Param
from harness.method import Method, grads_of
from harness.models import run


class Noisy(Method):
    name = "noisy"
    description = "BPTT plus decaying noise from the method's generator; mode=raise|diverge for failures"
    gradient_kind = "approximate"
    hyperparameters = {
        "mode": Param("ok", str, "ok, raise (at step 2), diverge (nan loss at step 2), die (the "
                      "process kills itself at step 2, as the out-of-memory killer or a scheduler would), "
                      "exit (SystemExit(0) in gradient at step 2) or interrupt (KeyboardInterrupt there)",
                      choices=("ok", "raise", "diverge", "die", "exit", "interrupt")),
        "sleep": Param(0.0, float, "seconds to sleep per step when SWEEP_TEST_SLEEP is set"),
    }

    def validate(self):
        self.steps_seen = 0

    def gradient(self, net, batch, rng):
        if self.steps_seen == 2 and self.mode == "exit":
            raise SystemExit(0)
        if self.steps_seen == 2 and self.mode == "interrupt":
            raise KeyboardInterrupt("raised by the method, not a signal")
        out, _ = run(net, batch.x, net.init_carry(batch.batch_size))
        loss = batch.loss(out)
        grads = grads_of(loss, net)
        scale = 0.1 / (1 + self.steps_seen)  # depends on the carried state
        return loss.item(), [g + scale * torch.randn(g.shape, generator=rng).to(g) for g in grads]

    def train_step(self, net, batch, updater, rng):
        self.steps_seen += 1
        if self.steps_seen == 1 and os.environ.get("SWEEP_TEST_LOG"):   # which process trained which run
            with open(os.environ["SWEEP_TEST_LOG"], "a") as log:
                log.write(f"{os.getpid()} {self.mode} {self.sleep}\n")
        if self.sleep and os.environ.get("SWEEP_TEST_SLEEP"):
            time.sleep(self.sleep)
        if self.mode == "die" and self.steps_seen == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "raise" and self.steps_seen == 2:
            raise RuntimeError("deliberate failure at step 2")
        loss = super().train_step(net, batch, updater, rng)
        return float("nan") if self.mode == "diverge" and self.steps_seen == 2 else loss

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]
