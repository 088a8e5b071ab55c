"""Training: interaction weighting, the per-scenario model (popularity, neighbours, factors, embeddings) and its
storage. Pure and CPU-bound: serving runs it in a child process and loads the result."""
