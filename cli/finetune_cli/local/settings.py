"""What `finetune run` takes from its environment that the operator takes from its settings:
the price of a GPU-hour (0 unless configured) and how many superseded generations' run
directories to keep. The same variable names as the operator's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from finetune_core.cost import Price

PRICE_ENV = "FINETUNE_GPU_HOUR_PRICE"
CURRENCY_ENV = "FINETUNE_CURRENCY"
KEEP_ENV = "FINETUNE_KEEP_GENERATIONS"


class InvalidSetting(ValueError):
    """An environment variable with a value it cannot have (the message names it)."""


@dataclass(frozen=True)
class LocalSettings:
    price: Price = field(default_factory=Price)
    keep_generations: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalSettings:
        env = os.environ if env is None else env
        price, currency = env.get(PRICE_ENV) or "0", env.get(CURRENCY_ENV) or "USD"
        keep = env.get(KEEP_ENV) or None
        try:
            per_hour = float(price)
        except ValueError:
            raise InvalidSetting(f"{PRICE_ENV}: {price!r} is not a number") from None
        if per_hour < 0 or per_hour != per_hour:
            raise InvalidSetting(f"{PRICE_ENV}: {price!r} must be 0 or more")
        if keep is not None and not (keep.isdigit()):
            raise InvalidSetting(f"{KEEP_ENV}: {keep!r} must be a whole number, 0 or more")
        return cls(Price(per_hour, currency), int(keep) if keep is not None else None)
