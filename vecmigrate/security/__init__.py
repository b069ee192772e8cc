"""Security: secret references, the key ring, envelope encryption, credentials and scrubbing."""
