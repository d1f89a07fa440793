"""Standing subscriptions on collections: model, LMDB store, matching engine, tokens, service."""
