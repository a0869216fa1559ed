"""Vendor provenance knowledge base (YAML data files, loaded by quaywatch.assets.provenance)."""
