"""/v1/responses: requests.py turns a CreateResponse into the chat-completion request that means the same,
runner.py runs it through chat/completions.py and answers with a `response` object or its events."""
