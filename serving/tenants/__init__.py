"""Tenants: API keys (hashed), their budgets, rate limits and ledger (docs/tenants.md)."""
