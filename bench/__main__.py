"""python -m bench COMMAND [options]: the shop's benchmarks (see bench/__init__.py)."""

import argparse
import sys

from bench import auth_cost, chain_floor, compare, endtoend, grpc_load

COMMANDS = {
    "run": (endtoend, "the whole shop end to end under a load tool, one JSON line per scenario"),
    "compare": (compare, "two code trees side by side, runs alternated"),
    "grpc-load": (grpc_load, "closed-loop gRPC GetProduct load (the run's gRPC scenario)"),
    "auth-cost": (auth_cost, "what AUTH=jwt costs per request, in-process"),
    "chain-floor": (chain_floor, "bare gRPC servers called like an order: the sync design against grpc.aio"),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="The shop's benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        command = commands.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(main=module.main)
    args = parser.parse_args(argv)
    return args.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
