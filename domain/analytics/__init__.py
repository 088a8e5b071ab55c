"""Admin analytics: durable rollups by event time (`refresh`), and the series and statistics read from them
(`service`)."""
