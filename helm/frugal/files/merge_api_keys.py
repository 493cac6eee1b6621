"""Init container of the frugal chart: add API keys from a Secret to the deployments YAML.

The server reads accepted keys only from `gateway.api_keys` in its deployments YAML
(serving/config.py). Keys belong in a Secret, not in a ConfigMap, so this writes a
pod-local copy of the ConfigMap's YAML with the Secret's keys (one per line; blank lines
and lines starting with '#' are skipped) appended, and the Ray containers read that copy.
Paths come from FRUGAL_CONFIG_IN, FRUGAL_API_KEYS_FILE and FRUGAL_CONFIG_OUT.
"""

import os
import sys
from pathlib import Path

import yaml


def merge(config_text: str, keys_text: str) -> str:
    config = yaml.safe_load(config_text)
    keys = [line.strip() for line in keys_text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        sys.exit("frugal: the API keys Secret holds no key: refusing to serve without auth")
    gateway = config.setdefault("gateway", {}) or {}
    config["gateway"] = gateway
    merged = list(gateway.get("api_keys") or [])
    merged += [key for key in keys if key not in merged]
    gateway["api_keys"] = merged
    return yaml.safe_dump(config, sort_keys=False)


if __name__ == "__main__":
    source = Path(os.environ["FRUGAL_CONFIG_IN"])
    keys_file = Path(os.environ["FRUGAL_API_KEYS_FILE"])
    target = Path(os.environ["FRUGAL_CONFIG_OUT"])
    target.write_text(merge(source.read_text(), keys_file.read_text()))
    print(f"frugal: wrote {target} with the API keys of {keys_file}")
