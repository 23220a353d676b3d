"""sqlora: reproducible Text-to-SQL fine-tuning (prepare → train → predict → evaluate)."""

__version__ = "0.1.0"
