"""Task registry, tokenisation, metrics and evaluation for ADePT experiments."""
