"""The OpenAI Responses API (`/v1/responses`) on the lever chain (docs/responses.md)."""
