"""The paper's claims, measured by this system (``vmem eval <experiment>``, ``vmem demo``).

Downstream of every stage: experiments read embedding batches (pipelines), build and edit real
index versions (indexer) and retrieve, vote and explain with the serving code.
"""
