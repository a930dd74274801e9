"""Datanets: community datasets with signed, licensed, reviewed, versioned contributions."""
