"""`python -m producer.cli`: the entry point, as the `kandinsky-batch` script runs it."""

import sys

from producer.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
