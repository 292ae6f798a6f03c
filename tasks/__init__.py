"""Task families: one module each, found by `harness.registry`."""
