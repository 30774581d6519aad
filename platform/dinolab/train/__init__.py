"""Training: schedules, optimizer groups, the training loop."""
