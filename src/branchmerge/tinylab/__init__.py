"""The embedded default: procedural domains, a tiny tokenizer and tiny Qwen3 weights shipped in the package."""

from branchmerge.tinylab.domains import DOMAINS, generate_problems, make_item
from branchmerge.tinylab.tokenizer import build_tokenizer

__all__ = ["DOMAINS", "build_tokenizer", "generate_problems", "make_item"]
