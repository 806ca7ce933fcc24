"""Everything that talks to PostgreSQL: the pool, migrations, the writer and the read queries."""
