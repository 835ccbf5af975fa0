import sys

from distbuild.cli import main

sys.exit(main())
