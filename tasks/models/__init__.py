"""Model wrappers: each model is wrapped once, loaded lazily."""
