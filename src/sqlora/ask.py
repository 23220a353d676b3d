"""The public entry point for asking a trained model about a database: ``from sqlora.ask import ask``.
The code is in :mod:`sqlora.infer.assistant`."""

from sqlora.infer.assistant import Answer, ask, format_table, prepare, resolve_base, trained_prompt

__all__ = ["Answer", "ask", "resolve_base", "format_table", "prepare", "trained_prompt"]
