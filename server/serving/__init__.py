"""Serving logic between routes and engine/storage: the one generation path, chat completions, conversations and
their replies, identities. Services raise domain errors (server.exceptions), never HTTP ones."""
