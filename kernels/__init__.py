"""Triton kernels and FlashInfer wrappers, each with a pure-torch reference."""
