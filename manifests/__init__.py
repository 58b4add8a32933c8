"""Versioned manifest schema (`manifests.schema`, documented in SCHEMA.md) and the SQL recipes
(`manifests/recipes/*.sql`) that define curated sets."""
