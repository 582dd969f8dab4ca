"""Identity (signed tokens), transport security (TLS), and exposure rules."""
