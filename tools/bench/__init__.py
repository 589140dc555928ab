"""`edge-bench`: latency, accuracy and the foreground study on recorded data (see tools/bench/cli.py)."""
