"""The shop's benchmarks, one command line: `python -m bench COMMAND`
(`make bench` runs `python -m bench run $(BENCH_ARGS)`).

    run        the whole shop end to end under a load tool (endtoend.py)
    compare    two code trees' stacks side by side, runs alternated (compare.py)
    grpc-load  the closed-loop gRPC driver the run's gRPC scenario uses (grpc_load.py)
    auth-cost  what AUTH=jwt costs per request, in-process (auth_cost.py)

A benchmark never installs anything: what it lacks (a load tool, py-spy,
psutil) it names, with how to get it, and exits non-zero."""
