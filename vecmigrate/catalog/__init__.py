"""The catalog: versions, routing, the provenance ledger, the shard journal and the change log."""
