"""Request schemas that own their validation and conversion (msgspec), and the JSON views of responses."""
