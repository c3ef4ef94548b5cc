"""The plumbing every process of the shop shares: configuration, logging,
errors, the gRPC server bootstrap, the channel factory, metrics and storage."""
