"""The quality gate: an artifact is registered only if it keeps the source's accuracy.

Accuracy is the scorecard's exact-match rate on held-out items; the tolerance is in
percentage points (3 by default: the issue's target for 4-bit). The decision is a pure
function so it is tested without a model.
"""

from __future__ import annotations

from quantize.manifest import Gate, Quality

DEFAULT_TOLERANCE_POINTS = 3.0


def decide(quality: Quality, tolerance_points: float, force: bool = False) -> Gate:
    """Pass when the accuracy drop is at most `tolerance_points` (a gain always passes)."""
    passed = -quality.delta_points <= tolerance_points + 1e-9
    return Gate(tolerance_points=tolerance_points, passed=passed, forced=force and not passed)


def refusal(quality: Quality, gate: Gate) -> str:
    """The message `frugal quantize` prints when it refuses an artifact."""
    return (
        f"quality gate failed: accuracy {quality.accuracy:.1%} vs {quality.source_accuracy:.1%} "
        f"for the 16-bit model ({quality.delta_points:+.1f} points; tolerance "
        f"-{gate.tolerance_points:g}) on {quality.items} held-out items. Not registered; "
        "use more bits, a smaller --group-size or a larger --tolerance, or --force to keep it "
        "marked as failing."
    )
