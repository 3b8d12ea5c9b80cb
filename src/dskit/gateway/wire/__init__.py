"""The OpenAI wire shape: the chunk encoder, the relay of a stream, cached answers as chunks."""
