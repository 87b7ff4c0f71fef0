"""Thin Typer commands over the library API.

The OpenMP wait policy is read once, when torch first loads, so the command line sets it here, before any
command imports torch (`branchmerge.runtime`)."""

from branchmerge import runtime

runtime.prepare_environment()
