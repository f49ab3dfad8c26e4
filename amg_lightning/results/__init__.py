"""A finished run's results: the run folder, reading shards, export, pictures, scores."""
