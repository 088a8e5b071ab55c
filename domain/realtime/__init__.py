"""Real time: the event stream, its consumer, impressions and attribution, live metrics."""
