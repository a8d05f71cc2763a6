"""Stage 3 of the visual memory: answer queries by nearest neighbours, vote, explain."""
