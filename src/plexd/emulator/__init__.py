"""plexd.emulator: a local Plexsphere control plane for development and tests."""
