"""Size-proportional prices for the bill (`frugal bench bill --price-by params`).

On 2 CPU cores the zoo's tiny models cost about the same per token (the node's overheads
dominate), so prices derived from measured throughput hide what choosing a small model
saves on a GPU node, where decoding is bound by reading the weights and a token costs
about in proportion to the weight bytes. This prices every model at the baseline model's
own price scaled by its weight bytes (parameters times bits, counted from the checkpoint):
the baseline keeps its price, a model a tenth its size costs a tenth, and a 4-bit copy of
the baseline about a quarter.
"""

from __future__ import annotations

from pathlib import Path

from serving.config import FrugalConfig, Price
from serving.pricing import price_table

# Bytes per element of the safetensors dtypes a checkpoint can hold.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
               "F64": 8}


def weight_bytes(model_dir: Path) -> int:
    """Bytes of a checkpoint's tensors, from its safetensors headers (no weights are
    read): a quantized checkpoint's packed weights, scales and zero points included."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = weights.get_slice(name)
                size = DTYPE_BYTES[tensor.get_dtype()]
                for dim in tensor.get_shape():
                    size *= dim
                total += size
    return total


def measured_prices(config: FrugalConfig) -> dict[str, Price]:
    """Each model's price as the running server computes it (list price, else derived
    from the router scorecard's measured throughput, else the default)."""
    measured = {}
    if config.router.scorecard and Path(config.router.scorecard).exists():
        from serving.router.scorecard import Scorecard

        scorecard = Scorecard.load(config.router.scorecard)
        measured = {m: card.score.throughput for m, card in scorecard.models.items()
                    if card.score.throughput is not None}
    return price_table(config, measured)


def params_priced(config: FrugalConfig) -> tuple[FrugalConfig, dict[str, int]]:
    """A copy of `config` whose every model has a list price proportional to its size,
    anchored at the baseline model's price; and the weight bytes used."""
    prices = measured_prices(config)
    baseline = config.baseline_model
    sizes = {m.model_id: weight_bytes(Path(m.model_loading_config.model_source))
             for m in config.models}
    anchor, base_size = prices[baseline], sizes[baseline]
    priced = config.model_copy(deep=True)
    for model in priced.models:
        scale = sizes[model.model_id] / base_size
        model.frugal.price = Price(input_per_million=anchor.input_per_million * scale,
                                   output_per_million=anchor.output_per_million * scale)
    return priced, sizes
