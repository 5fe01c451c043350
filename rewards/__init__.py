"""Reward periods: closing a month with statements, drift and adjustments, statement views."""
