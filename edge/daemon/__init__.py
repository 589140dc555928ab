"""The inspection daemon beside the line: capture and inference processes, verdict sinks, operations."""
