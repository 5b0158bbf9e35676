"""The training run: the fit loop, the job that builds and writes a tokenizer, its checkpoint format,
codebook-health metrics, CPU thread settings and stable retraining (code alignment)."""
