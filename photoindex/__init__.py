"""photoindex: a self-hosted photo-library indexer built on Prefect."""
