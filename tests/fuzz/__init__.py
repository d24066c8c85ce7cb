"""Property-based ("Bad input") tests: hostile user names, id_tokens, spawn forms and cluster options."""
