import sys

from scratchnst.app.cli import main

sys.exit(main())
