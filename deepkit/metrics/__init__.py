"""deepkit.metrics."""
