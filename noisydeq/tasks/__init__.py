"""noisydeq.tasks"""
