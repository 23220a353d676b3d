"""Inference: load a model folder (``loading``), generate for many prompts at once behind one interface
with two engines (``engine``: ours in ``fast``, transformers' ``generate()`` in ``hf``), and find the SQL
in what the model wrote (``sql_text``)."""
