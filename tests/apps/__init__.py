"""Importable apps for tests that serve them with uvicorn in a subprocess."""
