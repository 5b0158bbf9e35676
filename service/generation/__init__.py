"""Closing the loop for generative recommenders: the exact trie of valid IDs for constrained decoding,
token vocabularies, and adapters for Hugging Face `generate()`."""
