"""The ``vmem`` command: one entry point whose subcommands are the project's runnable jobs."""
