"""The CLI subcommands, one module each (NAME, HELP, add_arguments, main); cli.py discovers them."""
