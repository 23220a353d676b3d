"""prepare: datasets in their official layouts (Spider, BIRD, CoSQL/SParC, WikiSQL, the embedded sample), schemas read and rendered, database-value hints, prompts, and the records files."""
