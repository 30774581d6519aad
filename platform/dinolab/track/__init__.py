"""Tracking: a small Reporter interface, its MLflow implementation, reading runs back."""
