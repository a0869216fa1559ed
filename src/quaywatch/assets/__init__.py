"""Asset inventory building blocks: OUI registry lookups and vendor provenance."""
