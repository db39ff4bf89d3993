"""The `pirm` commands, one module per family; each `register`s its subcommands on the parser
and holds what they do. A new command goes into the family it belongs to, or a module of its own
listed in services/cli/main.py.

main.py imports every family to build the parser, so what a module imports at its top is paid by
every command, `pirm status` too: only argparse, grpc, the core, the common configuration and the
client library. NumPy, PIL, TensorFlow, Kubernetes, matplotlib and rich are imported inside the
commands that use them (tests/integration/test_cli_json.py runs the fast ones and checks)."""
