"""Durable state shared by every gateway replica: rows in a SQL database (SQLite by
default, PostgreSQL for a cluster, one SQLAlchemy code path) and file bytes in a blob
directory. Lever 4 (files and batches) keeps everything it must not lose here."""
