"""deepkit.layers."""
