"""Frame sources: live RealSense, recorded .bag/.db3 playback, and the synthetic drum line."""
