"""Pipeline stages and lifecycle plugins that belong to no single phase: pairs in, the run's log and report."""
