"""The inventory service: the catalog, its stock, and the saga's Reserve and
Release steps."""
