import sys

from deftmed.cli import main

sys.exit(main())
