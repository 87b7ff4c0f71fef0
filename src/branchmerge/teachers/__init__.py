"""Teachers: the async OpenAI-compatible client, and `serve`, an OpenAI-compatible server over a local checkpoint."""
