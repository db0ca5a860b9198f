"""netem's effects with netem: the kernel's own qdisc, laid on the scope by ``tc_shaping``.

Every parameter of Chaos Mesh's NetworkChaos netem actions is the kernel's:
correlations, reorder with its gap. A delayed packet is orphaned from its
socket when queued, so a sender is not throttled by its own delay.
"""

from __future__ import annotations


def arguments(effects: dict[str, float], netem_only: dict[str, float]) -> str:
    """tc's netem arguments for one kind's ``effects`` (as the packet queue takes them) and ``netem_only``."""
    def correlation(effect: str) -> str:  # network-netem's sections each have their own
        return _percent(netem_only.get(f"{effect}.correlation", netem_only.get("correlation", 0)))

    parts = ["netem"]
    if "delay_ms" in effects:
        parts.append(f"delay {_us(effects['delay_ms'])} {_us(effects.get('jitter_ms', 0))} {correlation('delay')}")
        if "reorder" in effects:
            parts.append(f"reorder {_percent(effects['reorder'])} {_percent(netem_only.get('reorder.correlation', 0))}")
            if gap := int(netem_only.get("reorder.gap", 0)):
                parts.append(f"gap {gap}")
    for effect, keyword in (("loss", "loss random"), ("duplicate", "duplicate"), ("corrupt", "corrupt")):
        if effect in effects:
            parts.append(f"{keyword} {_percent(effects[effect])} {correlation(effect)}")
    return " ".join(parts)


def _us(ms: float) -> str:
    return f"{round(ms * 1000)}us"


def _percent(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") + "%"
