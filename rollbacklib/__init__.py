"""rollbacklib: an executable runbook that rolls back a Prisma-managed PostgreSQL migration."""

__version__ = "0.1.0"
