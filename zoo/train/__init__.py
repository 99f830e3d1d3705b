"""Training: optimizer, losses, jitted steps and the training loop."""
