"""Reliability and security suites (issue 5): fault injection, bad inputs, concurrency, secrets."""
