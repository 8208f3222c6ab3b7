"""Pure ASGI middleware, one module each: observability, body size, access control."""
