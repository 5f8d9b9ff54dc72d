"""sglang-ssd: Speculative Speculative Decoding (Saguaro) as an SGLang plugin."""

__version__ = "0.1.0"
