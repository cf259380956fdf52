"""Hostile and malformed commands against the real worker (issue 8)."""
