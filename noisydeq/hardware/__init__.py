"""noisydeq.hardware"""
