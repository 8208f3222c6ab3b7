"""OpenAI's Conversations API over CodeFace conversations."""
