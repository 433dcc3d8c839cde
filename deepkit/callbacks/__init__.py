"""deepkit.callbacks."""
