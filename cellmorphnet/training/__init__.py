"""The training engine: config, loop, schedules, checkpoints and history."""
