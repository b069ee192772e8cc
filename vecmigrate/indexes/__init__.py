"""Indexes: FAISS and hnswlib artifacts, exact search, and shard-by-shard builds."""
