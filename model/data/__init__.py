"""Data in and out of training: catalogs, interactions files, the synthetic catalog and crash-safe file writes."""
