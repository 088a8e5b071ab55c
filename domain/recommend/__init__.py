"""The recommendation engine: recall -> filter -> rank -> rerank, each stage a small class registered by name."""
