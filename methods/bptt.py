"""Full backpropagation through time (Werbos 1990): run the whole sequence, backpropagate the
summed loss through every step, update once per sequence. Its gradient is the reference."""
from harness.method import Method, grads_of
from harness.models import run


class BPTT(Method):
    name = "bptt"
    description = "full backpropagation through time, one update per sequence"
    paper = "Werbos, Backpropagation through time: what it does and how to do it, Proc. IEEE 1990"
    gradient_kind = "exact"

    def gradient(self, net, batch, rng):
        out, _ = run(net, batch.x, net.init_carry(batch.batch_size))
        loss = batch.loss(out)
        return loss.item(), grads_of(loss, net)
