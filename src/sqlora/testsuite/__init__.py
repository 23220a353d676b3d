"""Test-suite accuracy (Zhong, Yu & Klein 2020): neighbour queries, fuzzed databases and their distillation."""
