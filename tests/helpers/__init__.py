"""Helpers shared by the tests (a test module never imports another test module)."""
