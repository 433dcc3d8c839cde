"""deepkit.training."""
