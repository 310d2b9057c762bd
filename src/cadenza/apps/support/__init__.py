"""The customer-support bot: `cadenza run support "I forgot my password"`."""

from .workflow import SupportState, bot, build

__all__ = ["SupportState", "bot", "build"]
