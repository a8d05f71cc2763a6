"""Data sets for demos and tests, written as WebDataset shards the ingest job reads."""
