"""Who may call and how much: JWTs, API keys, password hashes, access policy, rate limits."""
