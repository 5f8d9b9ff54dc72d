"""Launchers: CPU demo, presets."""
