"""Records on their way: sharding, transforms, seeding and the shard copy."""
