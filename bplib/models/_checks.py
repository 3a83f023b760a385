"""Channel arithmetic shared by the width-scaled models."""


def scaled(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: the channel count of a width-scaled layer."""
    return max(1, round(channels * width))
