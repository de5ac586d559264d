"""noisydeq benchmarks: ours vs peers (torchdeq, aihwkit, nn.Linear) and bounds, in one run."""
