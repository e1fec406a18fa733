"""pace-gguf converter: Hugging Face checkpoint or F32/F16/BF16 GGUF -> CE-reordered, quantized GGUF.

Importing this package is light: torch/transformers are imported only by the functions that need
them (tiny test models; upstream's converter runs in a subprocess).
"""
