"""creditbench: the shared harness (models, registry, runner, meters, records, tables)."""
