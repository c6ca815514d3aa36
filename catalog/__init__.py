"""Catalog data files (one JSON file per entry); installed as the package entropy_probe.catalog_data."""
