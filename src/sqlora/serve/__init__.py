"""sqlora serve: an OpenAI-compatible HTTP API and a web page over one model and its databases."""
