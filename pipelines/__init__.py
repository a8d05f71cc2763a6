"""Stage 1 of the visual memory: Apache Beam jobs that turn image shards into embedding shards.

Data flow: sources/ (read shards) -> decode (validate, to RGB) -> encoders/ (RunInference)
-> sink (Parquet embedding shards + rejected rows) -> batch manifest (the commit point).
"""
