"""vecmigrate: the domain of durable vector database migrations, importable without Temporal."""

__version__ = "0.1.0"
