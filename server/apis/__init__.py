"""The wire dialects (one folder each) and the system routes; server.apis.routing mounts them."""
