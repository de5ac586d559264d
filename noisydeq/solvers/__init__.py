"""noisydeq.solvers"""
