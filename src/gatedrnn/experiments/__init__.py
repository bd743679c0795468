"""The experiments harness: tasks, data loaders, one training loop, reports (used by the CLI)."""
