"""frugal serving: OpenAI gateway, router, vLLM engine deployments and cost accounting."""

__version__ = "0.1.0"
