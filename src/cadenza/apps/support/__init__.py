"""The customer-support bot: `cadenza run support "I forgot my password"`."""

from .bot import SupportState, bot, build

__all__ = ["SupportState", "bot", "build"]
