"""Command-line entry points (console scripts) and launch scripts."""
