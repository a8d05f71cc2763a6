import sys

from vmem.cli import main

sys.exit(main())
