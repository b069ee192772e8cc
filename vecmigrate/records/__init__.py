"""Records: ids and vectors as arrays, their checks and checksums, and how ids map to shards."""
