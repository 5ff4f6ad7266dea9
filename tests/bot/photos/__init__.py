"""Tests of photo intake (bot.photos and `dreambot photos check`)."""
