"""Credit-assignment methods: one module each, found by `harness.registry`."""
