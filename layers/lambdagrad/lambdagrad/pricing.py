"""AWS list prices the cost estimates use: one place, each a parameter with a date.

Prices are us-east-1 list prices (no free tier). Override any of them with
``dataclasses.replace(DEFAULT_PRICES, lambda_gb_second=...)`` or from the CLI.

Example
-------
>>> p = DEFAULT_PRICES
>>> round(p.standard_transition * 1e6, 2), round(p.express_request * 1e6, 2)
(25.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "Prices"]


@dataclass(frozen=True)
class Prices:
    """Unit prices in US dollars."""

    as_of: str = "2026-11-26"
    region: str = "us-east-1"
    # Lambda, arm64
    lambda_gb_second: float = 0.0000133334
    lambda_request: float = 0.20 / 1e6
    # Step Functions
    standard_transition: float = 25.0 / 1e6
    express_request: float = 1.00 / 1e6
    express_gb_second: float = 0.00001667
    # S3 Standard
    s3_put: float = 0.005 / 1000
    s3_get: float = 0.0004 / 1000
    s3_gb_month: float = 0.023


DEFAULT_PRICES = Prices()
