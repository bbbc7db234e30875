"""chared_flows: character-wise ensemble decoding of LLMs with different tokenizers."""

__version__ = "0.1.0"
