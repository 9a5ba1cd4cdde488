"""/v1/chat/completions: completions.py generates (one call or SSE chunks), params.py refuses parameters
ModelMill does not honour, stored_completions.py keeps `store: true` completions."""
