"""The tenant registry's storage: the database (SQLite or PostgreSQL), its versioned schema, usage records."""
