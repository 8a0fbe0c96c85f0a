"""Server strategies: pure aggregation maths plus small classes with a few hooks."""
