"""deepkit.models."""
