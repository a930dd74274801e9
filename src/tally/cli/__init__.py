"""The `tally` command line: parses, calls the packages, prints."""
