"""Helpers shared by the tests and the CPU demo: small local model pairs, no model hub."""
