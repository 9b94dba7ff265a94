"""The `tutorlm` command: `main` is the entry point; each command group registers its own parser."""
