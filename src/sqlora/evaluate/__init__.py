"""evaluate: execution accuracy and exact-set-match by Spider hardness, as the official evaluator scores them; BIRD EX and VES."""
