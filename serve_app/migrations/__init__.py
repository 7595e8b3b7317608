"""Alembic migrations of the app's database: ``env.py``, the revision template and ``versions/``.

Driven from :mod:`serve_app.schema` (no ``alembic.ini``); see docs/operations.md "Database migrations".
"""
