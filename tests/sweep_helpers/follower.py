"""A test method whose shared parameters come from `poisoned[at=3]`, a reference trajectory that
diverges after its third update: the shared figures exist only where the trajectory is finite."""
from methods.bptt import BPTT


class Follower(BPTT):
    name = "follower"
    description = "bptt measured along poisoned[at=3]'s trajectory"
    gradient_kind = "exact"

    def reference(self):
        return "poisoned", {"at": 3}
