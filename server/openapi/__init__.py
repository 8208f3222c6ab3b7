"""The OpenAPI document: its builder (document.py) and the JSON bodies the server answers with (schemas.py)."""
