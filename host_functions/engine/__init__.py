"""The engine: `Model` and `Sequence` (`model`), the order a step's calls must follow (`step_rules`),
the per-model batching `Scheduler`, sampling, speculative verification and direct generation."""
