"""Query generation: the prompt bank, query-type mixtures, and the cleaning of generated queries."""
