"""`python -m grpc_messenger` runs the `messenger` command."""

from grpc_messenger.cli.main import main

main()
