"""The shop's processes on one machine: `make run` (python -m launcher), and
the stacks the end-to-end tests and the benchmarks start from code.

plan.py says which processes to start and the environment of each;
probes.py asks a process whether it answers; supervisor.py keeps them
running as Kubernetes would (make run); stack.py starts and stops them
for tests and benchmarks; databases.py makes the PostgreSQL databases a
run needs."""
