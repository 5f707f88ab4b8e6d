"""Integration examples (a package so tests and `uvicorn examples.fastapi_app:app` can import them)."""
