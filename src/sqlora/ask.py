"""The public entry point for asking a trained model about a database: ``from sqlora.ask import ask``.
The code is in :mod:`sqlora.infer.ask`."""

from sqlora.infer.ask import Answer, ask, ensure_base, format_table, prepare, trained_prompt

__all__ = ["Answer", "ask", "ensure_base", "format_table", "prepare", "trained_prompt"]
