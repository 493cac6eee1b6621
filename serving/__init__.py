"""frugal serving: OpenAI-compatible gateway, router, vLLM engine deployments and cost accounting."""

__version__ = "0.1.0"
