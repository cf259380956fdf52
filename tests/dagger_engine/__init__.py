"""A test Dagger engine (placeholder: being written)."""
