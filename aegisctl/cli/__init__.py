"""Typer apps: parse options, call the core, render the result. No logic lives here."""
