"""Simulated worlds: an analytic RGB-D scene for perception tests and demos."""
