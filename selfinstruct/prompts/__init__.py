"""Prompt wording and response parsers, one module per stage. All wording and demonstrations are
this project's own."""
