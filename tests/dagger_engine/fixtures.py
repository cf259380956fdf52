"""pytest fixtures of the test engine (placeholder: being written)."""
