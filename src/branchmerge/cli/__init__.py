"""Thin Typer commands over the library API."""
