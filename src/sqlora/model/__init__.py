"""Base models: offline aliases, local folders or hub ids materialised, precision, tokenizer; and export (an adapter merged into its base)."""
