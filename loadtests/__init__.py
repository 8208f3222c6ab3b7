"""Load generator and benchmarks for CodeFace and any OpenAI-compatible chat server."""
