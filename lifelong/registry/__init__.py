"""Model versions, promotion and rollback (issue 4)."""
