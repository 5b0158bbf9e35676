"""What the web explorer shows beyond look-ups: what a code means (terms, label, representative items) and a
2-D map of a sample of items. Computed from one index snapshot, bounded per request, cached per snapshot."""
