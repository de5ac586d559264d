"""noisydeq.models"""
