"""pytest plugin of plexd-api: the ``control_plane`` fixture (arrives with the emulator)."""
