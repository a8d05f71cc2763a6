"""Stage 2 of the visual memory: Ray jobs that build, edit and publish sharded FAISS indexes.

Data flow: embedding batches (pipelines' boundary) -> reader -> train (once) -> add parts in
parallel -> merge into S shards -> publish an immutable version -> swap LATEST. Edits (add,
delete, prune) make new versions that share the trained quantizer.
"""
