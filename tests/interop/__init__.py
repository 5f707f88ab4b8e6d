"""Interop tests: this library and LibreChat's own code on one database."""
