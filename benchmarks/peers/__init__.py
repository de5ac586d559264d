"""Plain scripts a researcher would write instead of noisydeq, run by the benchmarks."""
