"""The tokenizer itself: input normaliser, MLP encoder/decoder and the residual quantizer (RQ-VAE, RQ-KMeans)."""
