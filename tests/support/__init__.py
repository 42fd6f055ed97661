"""Helpers the test modules share: fixtures of real servers (storage, LiveKit)."""
