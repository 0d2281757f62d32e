"""One module per subcommand. Each defines ``register(subparsers)``; main() discovers them."""
