"""datakit: a Parquet manifest, queried with DuckDB, that drives every dataset stage."""

__version__ = "0.1.0"
