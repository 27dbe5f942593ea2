"""Shared conformance suite: every frontend x every case x every dtype."""
