"""The HTTP side of CodeFace: the Starlette app, its middleware and routes, settings and the codeface CLI."""
