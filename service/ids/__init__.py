"""What a semantic ID is: its layout (levels, sizes, packing, parsing), collision resolution and the
embedding hash that tells an item's embedding changed. Pure functions and arrays: no I/O."""
