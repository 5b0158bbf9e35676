"""The storage engine: manifest, Parquet segments, the FAISS vector file, crash-safe file primitives,
the in-memory look-up arrays, and the index handle (open, refresh, append under the writer lock)."""
