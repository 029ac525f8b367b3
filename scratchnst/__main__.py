import sys

from scratchnst.cli import main

sys.exit(main())
