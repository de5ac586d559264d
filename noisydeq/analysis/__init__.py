"""noisydeq.analysis"""
