"""Fixtures shared by the bot's tests."""

from tests.bot.delivery_world import w  # noqa: F401  (the delivery tests' world, a fixture)
